"""rl/algorithms.py against hand-computed numbers, properties and a tiny end-to-end optimisation."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.algorithms import (
    aggregate,
    aggregation_units,
    compute_advantages,
    drop_zero_variance_groups,
    expand_to_tokens,
    grpo_advantages,
    kl_penalty,
    masked_mean,
    policy_loss,
    reinforce_pp_advantages,
    reinforce_pp_returns,
    rloo_advantages,
    token_logprobs,
)


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, t(b) if not isinstance(b, torch.Tensor) else b, atol=atol, rtol=0)


# Two interleaved groups of different sizes with non-contiguous ids:
# group 7: rewards [1, 2, 3] -> mean 2, population std sqrt(2/3)
# group 3: rewards [0, 4]    -> mean 2, population std 2
IDS = t([7, 3, 7, 3, 7], torch.long)
REWARDS = t([1.0, 0.0, 2.0, 4.0, 3.0])


# --------------------------------------------------------------------------- GRPO / RLOO


def test_grpo_hand_example():
    s = math.sqrt(1.5)  # 1 / sqrt(2/3)
    close(grpo_advantages(REWARDS, IDS, eps=0.0), [-s, -1.0, 0.0, 1.0, s])
    close(grpo_advantages(REWARDS, IDS), [-s, -1.0, 0.0, 1.0, s], atol=1e-5)  # eps=1e-6 barely moves it


def test_grpo_uses_population_std():
    # sample std of [0, 1] is 0.707 (-> +-0.707); population std is 0.5 (-> +-1)
    close(grpo_advantages(t([0.0, 1.0]), t([0, 0], torch.long), eps=0.0), [-1.0, 1.0])


def test_grpo_zero_variance_and_singleton_groups_are_exactly_zero():
    rewards = t([0.3, 0.3, 0.3, 5.0, 1.0, 0.0])  # 0.3 is not representable: the mean has roundoff
    ids = t([0, 0, 0, 1, 2, 2], torch.long)
    adv = grpo_advantages(rewards, ids)
    assert torch.isfinite(adv).all()
    assert adv[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    close(adv[4:], [1.0, -1.0])


def test_dr_grpo_has_no_std_division():
    close(grpo_advantages(REWARDS, IDS, normalize_std=False), [-1.0, -2.0, 0.0, 2.0, 1.0])


def test_rloo_hand_example():
    # group 7: 1 - (2+3)/2 = -1.5, 2 - (1+3)/2 = 0, 3 - (1+2)/2 = 1.5 ; group 3: 0 - 4, 4 - 0 ; group 9: alone
    rewards = torch.cat([REWARDS, t([10.0])])
    ids = torch.cat([IDS, t([9], torch.long)])
    close(rloo_advantages(rewards, ids), [-1.5, -4.0, 0.0, 4.0, 1.5, 0.0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(-10, 10)), min_size=1, max_size=12))
def test_rloo_leave_one_out_identity(pairs):
    ids = t([g for g, _ in pairs], torch.long)
    rewards = t([r for _, r in pairs], torch.float64)
    adv = rloo_advantages(rewards, ids)
    for i in range(len(pairs)):
        group = rewards[ids == ids[i]]
        n = len(group)
        expected = 0.0 if n == 1 else n / (n - 1) * (rewards[i] - group.mean()).item()
        assert adv[i].item() == pytest.approx(expected, abs=1e-9)


def test_drop_zero_variance_groups():
    rewards = t([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 2.0, 0.2, 0.2 + 1e-3])
    ids = t([0, 0, 1, 1, 2, 2, 3, 4, 4], torch.long)
    keep = drop_zero_variance_groups(rewards, ids)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [False, False, True, True, False, False, False, True, True]


# --------------------------------------------------------------------------- REINFORCE++

# multi-turn row: generated, generated, observation, observation, generated, padding
MT_MASK = t([[1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


def test_reinforce_pp_gamma1_no_kl_same_return_on_every_generated_token():
    returns = reinforce_pp_returns(t([2.0, -1.0, 5.0]), MT_MASK)
    close(returns, [[2, 2, 0, 0, 2, 0], [-1, -1, -1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


def test_reinforce_pp_discount_counts_generated_tokens_only():
    returns = reinforce_pp_returns(t([1.0, 1.0, 0.0]), MT_MASK, gamma=0.5)
    # row 0: the two observation tokens are skipped, so the token before them is one step away
    close(returns, [[0.25, 0.5, 0, 0, 1, 0], [0.25, 0.5, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


def test_reinforce_pp_kl_reduces_earlier_returns_by_later_kl():
    kl = t([[0.1, 0.2, 9.0, 0.3]])  # 9.0 sits on an observation token: ignored
    mask = t([[1, 1, 0, 1]])
    returns = reinforce_pp_returns(t([1.0]), mask, kl=kl, kl_coef=0.5)
    # token rewards -0.05, -0.1, (obs), 1 - 0.15 ; returns are suffix sums
    close(returns, [[1 - 0.5 * 0.6, 1 - 0.5 * 0.5, 0.0, 1 - 0.5 * 0.3]])
    # gamma < 1: G_1 = -0.1 + 0.5 * 0.85 ; G_0 = -0.05 + 0.5 * G_1
    g1 = -0.1 + 0.5 * 0.85
    close(reinforce_pp_returns(t([1.0]), mask, kl=kl, kl_coef=0.5, gamma=0.5), [[-0.05 + 0.5 * g1, g1, 0.0, 0.85]])


def test_reinforce_pp_advantages_are_globally_whitened():
    torch.manual_seed(0)
    mask = (torch.rand(6, 9) > 0.3).float()
    kl = torch.rand(6, 9) * 0.1
    rewards = torch.randn(6)
    adv = reinforce_pp_advantages(rewards, mask, kl=kl, kl_coef=0.2, gamma=0.9)
    m = mask.bool()
    assert (adv[~m] == 0).all()
    assert adv[m].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert adv[m].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    # exactly (G - mean) / (population std + eps) of the raw returns over masked tokens
    g = reinforce_pp_returns(rewards, mask, kl=kl, kl_coef=0.2, gamma=0.9)[m]
    close(adv[m], (g - g.mean()) / (g.std(unbiased=False) + 1e-6))


def test_reinforce_pp_hand_normalisation():
    # returns on masked tokens: 2, 2, 2, -1, -1, -1 -> mean 0.5, population std 1.5
    adv = reinforce_pp_advantages(t([2.0, -1.0, 5.0]), MT_MASK, eps=0.0)
    close(adv, [[1, 1, 0, 0, 1, 0], [-1, -1, -1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


# --------------------------------------------------------------------------- dispatcher


def test_compute_advantages_dispatch():
    mask = t([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1], [1, 1, 1]])
    s = math.sqrt(1.5)
    close(compute_advantages("grpo", REWARDS, IDS, mask, eps=0.0), expand_to_tokens(t([-s, -1.0, 0.0, 1.0, s]), mask))
    close(compute_advantages("dr_grpo", REWARDS, IDS, mask), expand_to_tokens(t([-1.0, -2.0, 0.0, 2.0, 1.0]), mask))
    close(compute_advantages("rloo", REWARDS, IDS, mask), expand_to_tokens(t([-1.5, -4.0, 0.0, 4.0, 1.5]), mask))
    rpp = compute_advantages("reinforce_pp", REWARDS, IDS, mask, gamma=0.9)
    close(rpp, reinforce_pp_advantages(REWARDS, mask, gamma=0.9))
    verdicts = t([1.0, 0.0, 0.0, 1.0, 1.0])
    close(compute_advantages("rft", verdicts, IDS, mask), expand_to_tokens(verdicts, mask))
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp", "rft"):
        assert compute_advantages(name, REWARDS, IDS, mask).shape == mask.shape
    with pytest.raises(ValueError, match="grpo, dr_grpo, rloo, reinforce_pp, rft"):
        compute_advantages("ppo", REWARDS, IDS, mask)


def test_expand_to_tokens():
    close(expand_to_tokens(t([2.0, -1.0]), t([[1, 1, 0], [0, 1, 1]]).bool()), [[2, 2, 0], [0, -1, -1]])


# --------------------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_values():
    logp, ref = t([math.log(0.5), -1.0]), t([math.log(0.25), -1.0])
    close(kl_penalty(logp, ref, "k1"), [math.log(2), 0.0])
    close(kl_penalty(logp, ref, "k2"), [0.5 * math.log(2) ** 2, 0.0])
    close(kl_penalty(logp, ref, "k3"), [0.5 + math.log(2) - 1, 0.0])  # ref/p = 0.5
    close(kl_penalty(t([0.0]), t([1.0])), [math.e - 2])  # default is k3
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(logp, ref, "k4")


@settings(max_examples=200, deadline=None)
@given(st.floats(-60, 60), st.floats(-60, 60), st.sampled_from([torch.float32, torch.float64]))
def test_k3_is_never_negative(a, b, dtype):
    assert kl_penalty(t([a], dtype), t([b], dtype), "k3").item() >= 0.0


def test_k3_and_k1_are_unbiased_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    p = t([0.5, 0.2, 0.15, 0.1, 0.05], torch.float64)
    q = t([0.1, 0.3, 0.2, 0.2, 0.2], torch.float64)
    exact = (p * (p / q).log()).sum().item()  # ~0.47
    x = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    logp, ref = p.log()[x], q.log()[x]
    assert kl_penalty(logp, ref, "k3").mean().item() == pytest.approx(exact, abs=0.01)
    assert kl_penalty(logp, ref, "k1").mean().item() == pytest.approx(exact, abs=0.01)
    # k3 has lower variance than k1 here (its selling point)
    assert kl_penalty(logp, ref, "k3").var() < kl_penalty(logp, ref, "k1").var()


# --------------------------------------------------------------------------- aggregation

PER_TOKEN = t([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
AGG_MASK = t([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])  # lengths 4, 2, 0


def test_aggregate_modes_hand_example():
    assert aggregate(PER_TOKEN, AGG_MASK, "token_mean").item() == pytest.approx(40 / 6)
    assert aggregate(PER_TOKEN, AGG_MASK, "seq_mean_token_mean").item() == pytest.approx((2.5 + 15) / 2)
    assert aggregate(PER_TOKEN, AGG_MASK, "seq_mean_token_sum_norm").item() == pytest.approx((10 / 4 + 30 / 4) / 2)
    assert aggregate(PER_TOKEN, AGG_MASK, "seq_mean_token_sum_norm", max_len=8).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="token_mean, seq_mean_token_mean, seq_mean_token_sum_norm"):
        aggregate(PER_TOKEN, AGG_MASK, "sum")


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_aggregate_empty_and_garbage_do_not_nan(mode):
    x = PER_TOKEN.clone().requires_grad_(True)
    garbage = torch.where(AGG_MASK.bool(), x, torch.nan)  # NaN everywhere off the mask
    out = aggregate(garbage, AGG_MASK, mode)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()
    assert aggregate(PER_TOKEN, torch.zeros(3, 4), mode).item() == 0.0


def test_masked_mean():
    assert masked_mean(PER_TOKEN, AGG_MASK).item() == pytest.approx(40 / 6)
    close(masked_mean(PER_TOKEN, AGG_MASK, dim=1), [2.5, 15.0, 0.0])
    close(masked_mean(PER_TOKEN, AGG_MASK.bool(), dim=0), [5.5, 11.0, 3.0, 4.0])


# --------------------------------------------------------------------------- policy loss


def test_policy_loss_ratio_one_is_minus_mean_advantage():
    logp = t([[-1.0, -2.0, -0.5], [-0.1, -3.0, -1.0]])
    adv = t([[1.0, 2.0, 9.0], [-1.0, 0.5, 0.0]])
    mask = t([[1, 1, 0], [1, 1, 1]])
    loss, stats = policy_loss(logp, logp, adv, mask)
    assert loss.item() == pytest.approx(-(1 + 2 - 1 + 0.5 + 0) / 5)
    assert stats == pytest.approx({"pg_loss": loss.item(), "kl": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0,
                                   "ratio_mean": 1.0, "ratio_max": 1.0})
    # a (B,) advantage is broadcast over the mask
    loss_seq, _ = policy_loss(logp, logp, t([1.0, -2.0]), mask)
    assert loss_seq.item() == pytest.approx(-(1 + 1 - 2 - 2 - 2) / 5)


def test_truncated_importance_weight_scales_each_token_and_is_capped():
    # old = the learner's recomputed logprobs, behaviour = the sampler's: weight min(exp(old - behaviour), cap)
    old = t([[-1.0, -2.0, -0.5]])
    behaviour = t([[-1.0, -3.0, -9.0]])  # weights 1, e (= 2.718), e^8.5 (capped at 2); the third is off the mask
    logp = (old + t([[0.1, -0.1, 0.0]])).requires_grad_()
    adv, mask = t([[1.0, 1.0, 1.0]]), t([[1, 1, 0]])
    loss, stats = policy_loss(logp, old, adv, mask, behaviour_logp=behaviour, tis_cap=2.0)
    ratio = torch.exp(t([0.1, -0.1]))
    clipped = torch.minimum(ratio, ratio.clamp(0.8, 1.2))  # A > 0: min(r A, clip(r) A) = min(r, clip(r))
    assert loss.item() == pytest.approx(-(1.0 * clipped[0] + 2.0 * clipped[1]).item() / 2)
    assert stats["is_weight"] == pytest.approx(1.5) and stats["is_capped"] == pytest.approx(0.5)
    loss.backward()
    assert logp.grad[0, 1].item() == pytest.approx(-2.0 * ratio[1].item() / 2)  # the weight scales the gradient
    # equal logprobs (or no cap): the plain PPO loss
    plain, _ = policy_loss(logp, old, adv, mask)
    same, _ = policy_loss(logp, old, adv, mask, behaviour_logp=old, tis_cap=2.0)
    assert same.item() == pytest.approx(plain.item())
    assert policy_loss(logp, old, adv, mask, behaviour_logp=behaviour)[0].item() == pytest.approx(plain.item())


def test_aggregation_units_are_what_aggregate_averages_over():
    mask = t([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert aggregation_units(mask, "token_mean") == 3
    assert aggregation_units(mask, "seq_mean_token_mean") == aggregation_units(mask, "seq_mean_token_sum_norm") == 2
    per_token = t([[1.0, 3.0, 0.0], [5.0, 5.0, 5.0], [2.0, 0.0, 0.0]])
    # aggregate = sum of what each unit contributes / units: splitting rows and weighting by units recombines it
    for mode in ("token_mean", "seq_mean_token_mean"):
        whole = aggregate(per_token, mask, mode).item()
        parts = [aggregate(per_token[i:i + 1], mask[i:i + 1], mode).item() * aggregation_units(mask[i:i + 1], mode)
                 for i in range(3)]
        assert sum(parts) / aggregation_units(mask, mode) == pytest.approx(whole)


def test_policy_loss_kl_term_is_reported_and_added():
    logp, ref = t([[-1.0, -2.0]]), t([[-1.5, -1.0]])
    mask = t([[1, 1]])
    loss, stats = policy_loss(logp, logp, t([[0.0, 0.0]]), mask, ref_logp=ref, kl_coef=0.5, kl_kind="k1")
    assert stats["pg_loss"] == 0.0 and stats["kl"] == pytest.approx(((-1 + 1.5) + (-2 + 1)) / 2)
    assert loss.item() == pytest.approx(0.5 * stats["kl"])


def _grad(ratio, adv, **kw):
    """Gradient of the loss w.r.t. logp for one token with the given ratio and advantage."""
    old = t([[-1.0]])
    logp = (old + math.log(ratio)).requires_grad_(True)
    loss, stats = policy_loss(logp, old, t([[adv]]), t([[1.0]]), **kw)
    loss.backward()
    return logp.grad.item(), stats["clip_fraction"]


def test_policy_loss_clipping_zeroes_gradient():
    # d(-ratio * A)/d logp = -ratio * A where unclipped
    assert _grad(1.5, 1.0) == (0.0, 1.0)  # A > 0, ratio > 1 + eps: clipped
    assert _grad(0.5, -1.0) == (0.0, 1.0)  # A < 0, ratio < 1 - eps: clipped
    g, cf = _grad(1.5, -1.0)  # A < 0, ratio high: pessimistic unclipped term, gradient flows
    assert (g, cf) == (pytest.approx(1.5), 0.0)
    g, cf = _grad(0.5, 1.0)  # A > 0, ratio low: unclipped, gradient flows
    assert (g, cf) == (pytest.approx(-0.5), 0.0)
    g, cf = _grad(1.1, 2.0)  # inside the trust region
    assert (g, cf) == (pytest.approx(-2.2), 0.0)


def test_policy_loss_asymmetric_clip_higher():
    assert _grad(1.25, 1.0)[0] == 0.0  # symmetric 0.2: clipped
    assert _grad(1.25, 1.0, clip_eps_high=0.28)[0] == pytest.approx(-1.25)  # clip-higher lets it rise
    assert _grad(1.3, 1.0, clip_eps_high=0.28)[0] == 0.0
    assert _grad(0.75, -1.0, clip_eps_high=0.28)[0] == 0.0  # the low side still uses clip_eps
    # loss value at the bound: -(1 + 0.28) * A
    loss, _ = policy_loss(t([[math.log(2.0)]]), t([[0.0]]), t([[1.0]]), t([[1.0]]), clip_eps_high=0.28)
    assert loss.item() == pytest.approx(-1.28)


def test_policy_loss_stats_and_clip_fraction():
    old = torch.zeros(2, 4)
    ratio = t([[1.5, 0.5, 1.5, 1.1], [0.5, 1.0, 3.0, 0.9]])
    adv = t([[1.0, -1.0, -1.0, 1.0], [1.0, 0.0, 1.0, 5.0]])
    mask = t([[1, 1, 1, 1], [1, 1, 0, 1]])  # the 3.0 ratio is masked out
    _, stats = policy_loss(ratio.log(), old, adv, mask)
    # clipped: (1.5, A>0) and (0.5, A<0) -> 2 of 7 masked tokens
    assert stats["clip_fraction"] == pytest.approx(2 / 7)
    assert stats["ratio_max"] == pytest.approx(1.5)
    assert stats["ratio_mean"] == pytest.approx((1.5 + 0.5 + 1.5 + 1.1 + 0.5 + 1.0 + 0.9) / 7)
    r = ratio[mask.bool()]
    assert stats["approx_kl"] == pytest.approx(((r - 1) - r.log()).mean().item(), abs=1e-6)


def test_policy_loss_ignores_garbage_off_the_mask_and_adds_reference_kl():
    logp = t([[-1.0, -0.5, -torch.inf]]).requires_grad_(True)
    old = t([[-1.2, -0.5, -torch.inf]])
    ref = t([[-1.0, -1.5, torch.nan]])
    adv, mask = t([[1.0, -1.0, 1.0]]), t([[1, 1, 0]])
    loss, stats = policy_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1, aggregation="seq_mean_token_mean")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all() and logp.grad[0, 2] == 0
    k3 = (0.0 + math.exp(-1)) / 2  # token 0: logp == ref -> 0 ; token 1: d = ref - logp = -1, e^d - d - 1 = e^-1
    pg = (-1.2 * 1.0 + 1.0 * 1.0) / 2  # token 0: ratio e^0.2 = 1.22 clipped to 1.2 ; token 1: ratio 1, A = -1
    assert loss.item() == pytest.approx(pg + 0.1 * k3, abs=1e-6)
    assert stats["kl_ref"] == pytest.approx(k3)
    assert stats["clip_fraction"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- token log-probs


def _reference_logprobs(logits, ids):
    ref = torch.log_softmax(logits.float(), dim=-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    return torch.cat([torch.zeros(ids.shape[0], 1), ref], dim=1)


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_token_logprobs_matches_log_softmax_gather(chunk_size):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11, requires_grad=True)
    ids = torch.randint(0, 11, (3, 7))
    out = token_logprobs(logits, ids, chunk_size=chunk_size)
    assert out.shape == (3, 7) and (out[:, 0] == 0).all()
    close(out, _reference_logprobs(logits, ids))
    (g,) = torch.autograd.grad(out.sum(), logits)
    (g_ref,) = torch.autograd.grad(_reference_logprobs(logits, ids).sum(), logits)
    close(g, g_ref)


def test_token_logprobs_large_and_low_precision_logits():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 50) * 1e4
    ids = torch.randint(0, 50, (2, 5))
    out = token_logprobs(logits, ids)
    assert torch.isfinite(out).all() and (out <= 0).all()
    close(out, _reference_logprobs(logits, ids), atol=1e-3)
    half = logits.to(torch.bfloat16)
    out_bf16 = token_logprobs(half, ids)
    assert out_bf16.dtype == torch.float32
    close(out_bf16, _reference_logprobs(half.float(), ids), atol=1e-3)
    assert token_logprobs(logits[:, :1], ids[:, :1]).tolist() == [[0.0], [0.0]]


# --------------------------------------------------------------------------- end to end


def test_grpo_policy_loss_increases_expected_reward():
    """A 'policy' with one logit vector per position learns to emit a target token."""
    torch.manual_seed(0)
    T, V, target, n_groups, group_size = 4, 6, 2, 4, 8
    B = n_groups * group_size
    logits = torch.zeros(T, V, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    lengths = torch.randint(1, T + 1, (B,))
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    group_ids = torch.arange(n_groups).repeat_interleave(group_size)

    def expected_reward() -> float:  # reward = share of a sequence's generated tokens equal to target
        p = logits.softmax(-1)[:, target]
        return ((p[None] * mask).sum(1) / mask.sum(1)).mean().item()

    start = expected_reward()
    for _ in range(15):
        with torch.no_grad():
            actions = torch.multinomial(logits.softmax(-1), B, replacement=True).T  # (B, T)
            rewards = ((actions == target).float() * mask).sum(1) / mask.sum(1)
            adv = compute_advantages("grpo", rewards, group_ids, mask)
            old_logp = logits.log_softmax(-1).gather(1, actions.T).T
        for _ in range(2):  # two PPO epochs: the second one sees ratio != 1
            logp = logits.log_softmax(-1).gather(1, actions.T).T  # (B, T)
            loss, stats = policy_loss(logp, old_logp, adv, mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert math.isfinite(loss.item()) and 0.0 <= stats["clip_fraction"] <= 1.0
    end = expected_reward()
    assert start == pytest.approx(1 / V)
    assert end > 0.6, (start, end)  # ~0.92-0.95 across seeds
