"""The RL objective as pure torch functions: advantages, KL estimators, PPO-clip loss, aggregation.

Batch conventions (shared by every function here):

* A batch is ``B`` sequences right-padded to length ``T``.
* ``mask`` (B, T), bool or 0/1 float, is 1 on tokens the policy generated (assistant
  tokens: the loss mask) and 0 on prompt, tool/user observations and padding.  In a
  multi-turn episode the generated tokens are several runs separated by observations.
* ``rewards`` (B,) is one scalar per sequence (the episode's reward).
* ``group_ids`` (B,) long: sequences sampled from the same task prompt share an id;
  the ids need not be contiguous or sorted, and groups may have different sizes.

Values at masked-out positions are never read (``torch.where``, not ``x * mask``), so
padding may hold garbage such as ``-inf`` log-probs without leaking NaN into the loss
or its gradient.

Standard deviation convention: group and batch standard deviations are *population*
std (divide by n, ``unbiased=False``).  It is defined for every group size (the
sample std is 0/0 for a group of one, which happens once env failures make group
sizes uneven), and it gives every group's normalised advantages exactly unit RMS
whatever its size.  The GRPO paper / TRL use ``torch.std`` (Bessel, n-1); for a fixed
group size G that only rescales advantages by sqrt((G-1)/G), i.e. the step size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rl.choices import ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_KINDS, TOKEN_AGGREGATIONS

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "KL_KINDS",
    "aggregate",
    "aggregation_units",
    "compute_advantages",
    "drop_zero_variance_groups",
    "expand_to_tokens",
    "grpo_advantages",
    "kl_penalty",
    "masked_mean",
    "policy_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_returns",
    "rft_advantages",
    "rloo_advantages",
    "token_logprobs",
]


# --------------------------------------------------------------------------- helpers


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is set; 0 where nothing is set.

    x, mask: same shape (e.g. (B, T)).  Returns a scalar if ``dim`` is None, else ``x``
    reduced over ``dim``.  Masked-out entries of ``x`` may be inf/NaN.
    """
    m = mask.bool()
    total = torch.where(m, x, 0).sum(dim=dim)
    count = m.sum(dim=dim).clamp(min=1)  # empty -> 0 / 1 = 0, not NaN
    return total / count


def _as_float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.float()


def _group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-member statistics of each member's group.

    rewards (B,), group_ids (B,) -> (count, mean, population var, max - min), each (B,).
    """
    r = _as_float(rewards)
    # arbitrary ids -> dense 0..G-1 so that groups can be reduced with index_add / scatter_reduce
    uniq, idx = torch.unique(group_ids, return_inverse=True)
    zeros = r.new_zeros(uniq.numel())
    count = zeros.index_add(0, idx, torch.ones_like(r))
    mean = zeros.index_add(0, idx, r) / count
    dev = r - mean[idx]
    var = zeros.index_add(0, idx, dev * dev) / count  # two-pass: no E[x^2] - E[x]^2 cancellation
    hi = zeros.scatter_reduce(0, idx, r, "amax", include_self=False)
    lo = zeros.scatter_reduce(0, idx, r, "amin", include_self=False)
    return count[idx], mean[idx], var[idx], (hi - lo)[idx]


def expand_to_tokens(seq_advantages: Tensor, mask: Tensor) -> Tensor:
    """Broadcast one advantage per sequence to its generated tokens.

    seq_advantages (B,), mask (B, T) -> (B, T), zero off the mask.
    """
    return seq_advantages[:, None] * mask.to(seq_advantages.dtype)


# --------------------------------------------------------------------------- advantages


def grpo_advantages(
    rewards: Tensor, group_ids: Tensor, normalize_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO: A_i = (r_i - mean_g) / (std_g + eps), std = population std of the group.

    ``normalize_std=False`` is Dr.GRPO (A_i = r_i - mean_g): dividing by the std up-weights
    groups whose rewards barely differ (too easy / too hard prompts).
    rewards (B,), group_ids (B,) -> (B,).  A group whose rewards are all equal (including
    a group of one) gets exactly 0.
    """
    r = _as_float(rewards)
    _, mean, var, spread = _group_stats(r, group_ids)
    adv = r - mean
    if normalize_std:
        adv = adv / (var.sqrt() + eps)
    # equal rewards: force exact 0; roundoff in the mean would otherwise leak ~1e-9 / eps
    return torch.where(spread > 0, adv, 0)


def rloo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """RLOO: A_i = r_i - mean of the *other* members of i's group (unbiased baseline).

    Equals n/(n-1) * (r_i - mean_g).  Groups of size 1 have no baseline and get 0.
    rewards (B,), group_ids (B,) -> (B,).
    """
    r = _as_float(rewards)
    n, mean, _, _ = _group_stats(r, group_ids)
    leave_one_out = (n * mean - r) / (n - 1).clamp(min=1)
    return torch.where(n > 1, r - leave_one_out, 0)


def rft_advantages(success: Tensor) -> Tensor:
    """Rejection-sampling fine-tuning, online (expert iteration: STaR, RAFT, ReST-EM): A_i = 1 on the episodes the
    verifier passes, 0 on the rest, so the policy loss is the negative log-likelihood of the policy's own verified
    successes. No baseline, hence no push-down of failed episodes: a small policy cannot unlearn the tool-call
    format it shares with them, and a group with one success still teaches (GRPO's gradient on it is noise-scaled).
    success (B,) 0/1 (tau2's verdict, not the mixed reward) -> (B,).
    """
    return (_as_float(success) > 0).to(torch.float32)


def reinforce_pp_returns(
    rewards: Tensor,
    mask: Tensor,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
) -> Tensor:
    """Un-normalised REINFORCE++ token returns.

    Token reward on generated token t: ``-kl_coef * kl[t]``, plus the sequence reward on the
    last generated token.  Return G_t = sum over generated s >= t of gamma^(k(s)-k(t)) * reward_s,
    where k counts *generated* tokens: observation tokens between turns are skipped, neither
    rewarded nor discounted (the policy did not act there).
    rewards (B,), mask (B, T), kl (B, T) or None -> (B, T), zero off the mask.
    """
    m = mask.bool()
    B, T = m.shape
    r = _as_float(rewards)
    token_r = r.new_zeros(B, T)
    if kl is not None and kl_coef != 0.0:
        token_r = token_r - kl_coef * torch.where(m, kl.to(r.dtype), 0)
    # the outcome reward lands on the last generated token (-1: nothing generated -> no reward)
    last = torch.where(m, torch.arange(T, device=m.device), -1).amax(dim=1)
    outcome = torch.where(last >= 0, r, 0)
    token_r = token_r.scatter_add(1, last.clamp(min=0)[:, None], outcome[:, None])

    if gamma == 1.0:
        # rewards are 0 off the mask, so the return is a plain reverse cumulative sum
        returns = token_r.flip(1).cumsum(1).flip(1)
    else:
        running = r.new_zeros(B)
        out = []
        for t in reversed(range(T)):
            running = torch.where(m[:, t], token_r[:, t] + gamma * running, running)
            out.append(running)
        returns = torch.stack(out[::-1], dim=1)
    return torch.where(m, returns, 0)


def reinforce_pp_advantages(rewards: Tensor, mask: Tensor, eps: float = 1e-6, **returns_kw) -> Tensor:
    """REINFORCE++ (Hu, 2025): token returns (``reinforce_pp_returns``, which takes ``returns_kw``: kl, kl_coef,
    gamma) whitened over the batch.

    A_t = (G_t - mu) / (sigma + eps) with mu, sigma the mean and population std of G over
    *all masked tokens of the batch* (global, not per group: no critic and no group baseline).
    rewards (B,), mask (B, T) -> (B, T), zero off the mask.
    """
    returns = reinforce_pp_returns(rewards, mask, **returns_kw)
    mu = masked_mean(returns, mask)
    sigma = masked_mean((returns - mu) ** 2, mask).sqrt()
    return torch.where(mask.bool(), (returns - mu) / (sigma + eps), 0)


def drop_zero_variance_groups(rewards: Tensor, group_ids: Tensor, eps: float = 1e-8) -> Tensor:
    """DAPO dynamic sampling keep-mask: False for every member of a group whose rewards are
    all equal (max - min <= eps), since such a group has zero group-relative advantage and
    only dilutes the batch.  Groups of one are therefore dropped too.
    rewards (B,), group_ids (B,) -> (B,) bool.
    """
    _, _, _, spread = _group_stats(rewards, group_ids)
    return spread > eps


def compute_advantages(name: str, rewards: Tensor, group_ids: Tensor, mask: Tensor, **kw) -> Tensor:
    """Dispatch to an advantage estimator; always returns token advantages (B, T), masked.

    name: "grpo" | "dr_grpo" (GRPO without std division) | "rloo" | "reinforce_pp"
    (which ignores ``group_ids``) | "rft" (``rewards`` are the verifier's 0/1 verdicts; ignores ``group_ids``).
    ``kw`` goes to the estimator (eps, kl, kl_coef, gamma, ...).
    """
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; expected one of {', '.join(ADVANTAGE_ESTIMATORS)}")
    if name == "reinforce_pp":
        return reinforce_pp_advantages(rewards, mask, **kw)
    if name == "grpo":
        seq = grpo_advantages(rewards, group_ids, **kw)
    elif name == "dr_grpo":
        seq = grpo_advantages(rewards, group_ids, normalize_std=False, **kw)
    elif name == "rft":
        seq = rft_advantages(rewards)
    else:
        seq = rloo_advantages(rewards, group_ids, **kw)
    return expand_to_tokens(seq, mask)


# --------------------------------------------------------------------------- KL, log-probs


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimator of KL(pi || ref) from tokens sampled from pi (Schulman, 2020).

    With log_ratio = logp - ref_logp:
      k1 = log_ratio                          unbiased, high variance, can be negative
      k2 = 0.5 * log_ratio^2                  biased (low for close policies), >= 0
      k3 = exp(-log_ratio) + log_ratio - 1    unbiased, >= 0, low variance
    k3 is computed as expm1(d) - d (d = -log_ratio): accurate for small d and never < 0.
    logp, ref_logp (B, T) -> (B, T).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kind!r}; expected one of {', '.join(KL_KINDS)}")
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    d = -log_ratio
    return torch.expm1(d) - d


def token_logprobs(logits: Tensor, input_ids: Tensor, chunk_size: int = 1024) -> Tensor:
    """log pi(input_ids[:, t] | < t) read from ``logits[:, t-1]``; position 0 (no context) gets 0.

    logits (B, T, V) any float dtype, input_ids (B, T) long -> (B, T) float32.

    Memory: log_softmax would materialise a second (B, T, V) tensor and keep it for
    backward; instead we compute ``gathered logit - logsumexp(logits)``, whose outputs are
    only (B, T).  The float32 upcast (needed: bf16 logsumexp loses ~2 digits) is done on
    ``chunk_size`` time steps at a time, so without autograd (old / reference log-probs)
    the float32 temporaries are bounded by B * chunk_size * V.  With autograd the chunks
    are saved for logsumexp's backward, so the micro-batch token budget still matters.
    """
    B, T, _ = logits.shape
    pieces = [logits.new_zeros(B, 1, dtype=torch.float32)]
    for s in range(0, T - 1, chunk_size):
        e = min(s + chunk_size, T - 1)
        chunk = logits[:, s:e].float()  # predicts tokens s+1 .. e
        target = input_ids[:, s + 1 : e + 1, None]
        pieces.append(chunk.gather(-1, target).squeeze(-1) - torch.logsumexp(chunk, dim=-1))
    return torch.cat(pieces, dim=1)


# --------------------------------------------------------------------------- loss


def aggregate(per_token: Tensor, mask: Tensor, mode: str, max_len: int | None = None) -> Tensor:
    """Reduce a per-token loss (B, T) to a scalar.

    "token_mean"              sum over all masked tokens / number of masked tokens
                              (DAPO, Dr.GRPO: every token weighs the same).
    "seq_mean_token_mean"     mean over each sequence's tokens, then over sequences
                              (original GRPO: tokens of long answers weigh less).
    "seq_mean_token_sum_norm" each sequence's token sum / max_len (a constant, default T),
                              then mean over sequences (Dr.GRPO: no length bias).
    Sequences with no masked tokens contribute 0 and are left out of the sequence count,
    so padding rows neither produce NaN nor dilute the loss; an all-empty batch gives 0.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; expected one of {', '.join(AGGREGATIONS)}")
    m = mask.bool()
    if mode == "token_mean":
        return masked_mean(per_token, m)
    seq_sum = torch.where(m, per_token, 0).sum(dim=-1)  # (B,)
    seq_len = m.sum(dim=-1)  # (B,)
    if mode == "seq_mean_token_mean":
        per_seq = seq_sum / seq_len.clamp(min=1)
    else:
        max_len = per_token.shape[-1] if max_len is None else max_len
        if max_len <= 0:
            raise ValueError(f"max_len must be positive, got {max_len}")
        per_seq = seq_sum / max_len
    return per_seq.sum() / (seq_len > 0).sum().clamp(min=1)


def aggregation_units(mask: Tensor, mode: str) -> int:
    """What `aggregate(..., mode)` averages over in this mask: loss tokens (token_mean) or sequences that have any.
    A batch split into micro batches and ranks weighs micro batch m by units(m) / units(batch), which makes the
    sum of the micro losses' gradients the gradient of the whole batch's aggregate."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; expected one of {', '.join(AGGREGATIONS)}")
    m = mask.bool()
    return int(m.sum()) if mode in TOKEN_AGGREGATIONS else int((m.sum(dim=-1) > 0).sum())


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    aggregation: str = "token_mean",
    max_len: int | None = None,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    behaviour_logp: Tensor | None = None,
    tis_cap: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip surrogate loss, optionally with a KL-to-reference term in the loss (GRPO).

    logp (B, T) requires grad; old_logp (B, T) from the sampling policy; advantages (B, T)
    (a (B,) tensor is broadcast to the mask); mask (B, T).

    per-token loss = -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps_high) * A),
    ratio = exp(logp - old_logp).  ``clip_eps_high`` > ``clip_eps`` is DAPO's clip-higher:
    a larger upper bound lets low-probability tokens with A > 0 keep rising (against
    entropy collapse).  If ``kl_coef`` and ``ref_logp`` are given, ``kl_coef * KL_kind(pi||ref)``
    is added per token and aggregated the same way.

    Truncated importance sampling (``tis_cap`` with ``behaviour_logp``): when ``old_logp`` is not the sampler's
    own (the learner recomputed it, or the episodes came from older weights: one-step off-policy), each token's
    surrogate is weighted by min(exp(old_logp - behaviour_logp), tis_cap), detached: the correction from the
    policy that sampled the token to the one the PPO ratio is taken against, capped so that a rare token the
    sampler under-weighted cannot dominate the batch.

    Returns (scalar loss, stats) with stats as floats:
      pg_loss        the clipped surrogate alone; kl: the aggregated KL term (0 without a reference)
      clip_fraction  share of tokens whose clipped term was selected (their gradient is 0)
      approx_kl      mean k3 estimate of KL(old || new) (tokens were sampled from old)
      ratio_mean, ratio_max, and kl_ref (mean KL to the reference) when used.
    """
    m = mask.bool()
    if advantages.dim() == 1:
        advantages = expand_to_tokens(advantages, mask)
    adv = advantages.detach()
    eps_low = clip_eps
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high

    # zero log-ratio off the mask: garbage there (e.g. -inf) must not reach exp() and NaN the grad
    log_ratio = torch.where(m, logp - old_logp.detach(), 0)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    is_weight = None
    if tis_cap is not None and behaviour_logp is not None:
        is_weight = torch.exp(torch.where(m, old_logp - behaviour_logp, 0)).clamp(max=tis_cap).detach()
        per_token = per_token * is_weight
    pg_loss = aggregate(per_token, m, aggregation, max_len)
    loss = pg_loss

    stats: dict[str, float] = {"pg_loss": pg_loss.item(), "kl": 0.0}
    if ref_logp is not None and kl_coef != 0.0:
        kl = kl_penalty(torch.where(m, logp, 0), torch.where(m, ref_logp.detach(), 0), kl_kind)
        kl_term = aggregate(kl, m, aggregation, max_len)
        loss = loss + kl_coef * kl_term
        stats["kl"] = kl_term.item()
        stats["kl_ref"] = masked_mean(kl.detach(), m).item()

    with torch.no_grad():
        n_tokens = int(m.sum())
        stats["clip_fraction"] = masked_mean((clipped < unclipped).float(), m).item()
        stats["approx_kl"] = masked_mean(kl_penalty(old_logp, logp, "k3"), m).item()
        stats["ratio_mean"] = masked_mean(ratio, m).item()
        stats["ratio_max"] = torch.where(m, ratio, -torch.inf).max().item() if n_tokens else 0.0
        if is_weight is not None:
            stats["is_weight"] = masked_mean(is_weight, m).item()
            stats["is_capped"] = masked_mean((is_weight >= tis_cap).float(), m).item()
    return loss, stats
