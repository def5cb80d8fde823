"""The ZeRO-3 learner on a real local Ray cluster: 2 ranks on gloo, a tiny random Qwen2.

About 2 minutes on the 2-core machine (3.5 under load), nearly all of it two group start-ups (Ray worker start +
importing transformers/DeepSpeed on both ranks at once); the steps themselves take well under a second."""
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import ray
import torch

from actors.learner import (
    PHASES,
    LearnerFailed,
    LearnerGroup,
    LearnerRank,
    LearnerSettings,
    shared_prefix_len,
)
from actors.rendezvous import free_port_outside_ephemeral_range
from rl.algorithms import policy_loss, token_logprobs
from rl.contracts import TrainBatch
from rl.runtime import init_ray

pytestmark = pytest.mark.slow

VOCAB = 512
TIMEOUT = 300  # every group call; a ZeRO-3 deadlock shows up as a timeout, not a hung test run


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=256, num_hidden_layers=2, tie_word_embeddings=True,
                      max_position_embeddings=512)
    path = tmp_path_factory.mktemp("tiny_qwen2")
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    (path / "chat_template.jinja").write_text("{{ messages }}")  # stands in for tokenizer files
    return path


@pytest.fixture(scope="module")
def ray_cluster():
    init_ray(None, 2, log_to_driver=False)
    yield
    ray.shutdown()


def make_batch(n, seed, lo=20, hi=40):
    """n sequences: a prompt (no loss) then generated tokens with one random advantage per sequence."""
    g = torch.Generator().manual_seed(seed)
    batch = TrainBatch(input_ids=[], loss_mask=[], advantages=[])
    for _ in range(n):
        length = int(torch.randint(lo, hi + 1, (), generator=g))
        prompt = int(torch.randint(5, 11, (), generator=g))
        mask = [0] * prompt + [1] * (length - prompt)
        adv = float(torch.randn((), generator=g))
        batch.input_ids.append(torch.randint(0, VOCAB, (length,), generator=g).tolist())
        batch.loss_mask.append(mask)
        batch.advantages.append([adv * x for x in mask])
    return batch


def on_policy(group, batch):
    return replace(batch, old_logprobs=group.logprobs(batch))


def gathered(group):
    return ray.get(group.state_dict_ref(), timeout=TIMEOUT)


def hf_logprobs(model, batch):
    with torch.no_grad():
        return [token_logprobs(model(torch.tensor([ids])).logits, torch.tensor([ids]))[0].tolist()
                for ids in batch.input_ids]


def padded(rows, dtype=torch.long):
    return torch.nn.utils.rnn.pad_sequence([torch.tensor(r, dtype=dtype) for r in rows], batch_first=True)


def hf_batch_logprobs(model, batch, temperature=1.0):
    """(B, T) logprobs of the right-padded batch from a plain HF forward (what a ZeRO-3 step must agree with)."""
    ids = padded(batch.input_ids)
    attn = padded([[1] * len(r) for r in batch.input_ids])
    return token_logprobs(model(ids, attention_mask=attn).logits / temperature, ids)


def hf_model(model_path, state_dict=None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if state_dict is not None:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied: lives under embed_tokens
    return model.eval()


class TestZero3Group:
    """One 2-rank group (no reference model) shared by these tests, which run in order."""

    @pytest.fixture(scope="class")
    def group(self, ray_cluster, model_path):
        g = LearnerGroup(LearnerSettings(model_path=str(model_path), lr=1e-3, micro_batch_size=2),
                         num_ranks=2, timeout_s=TIMEOUT)
        yield g
        g.shutdown()

    def test_logprobs_match_hf_before_training(self, group, model_path):
        assert [(s["global_steps"], s["reference_model"], s["threads"]) for s in group.stats()] == [(0, False, 1)] * 2
        batch = make_batch(5, seed=0)
        ref = hf_logprobs(hf_model(model_path), batch)
        ours = group.logprobs(replace(batch, loss_mask=None))  # no loss mask: every position
        assert [len(r) for r in ours] == [len(r) for r in batch.input_ids]
        assert max(abs(a - b) for r1, r2 in zip(ours, ref) for a, b in zip(r1, r2)) < 1e-5
        assert all(r[0] == 0.0 for r in ours)
        # with one, the positions some row of the micro batch has loss at (what the PPO ratio reads); the rest hold
        # 0, as token 1 does here (every prompt is 5-10 tokens long)
        masked = group.logprobs(batch)
        assert all(abs(got - want) < 1e-5 for r1, r2, mask in zip(masked, ours, batch.loss_mask)
                   for got, want, m in zip(r1, r2, mask) if m)
        assert all(r[1] == 0.0 for r in masked) and all(r[1] != 0.0 for r in ours)

    def test_two_train_steps_change_the_weights(self, group):
        before = gathered(group)
        assert "model.embed_tokens.weight" in before and "lm_head.weight" not in before  # tied: stored once
        batch = make_batch(8, seed=1)
        for _ in range(2):
            metrics = group.train_step(on_policy(group, batch))
            assert set(metrics) >= {"loss", "pg_loss", "kl", "clip_fraction", "approx_kl", "grad_norm",
                                    "tokens", "seconds", *PHASES}
            # where the step's time went (no reference model in this group: no time in its phase)
            assert all(0 < metrics[k] <= metrics["seconds"] for k in PHASES if k != "reference_s")
            assert metrics["reference_s"] < 0.01
            assert all(math.isfinite(v) for v in metrics.values())
            assert metrics["tokens"] == sum(map(sum, batch.loss_mask)) and metrics["grad_norm"] > 0
        after = gathered(group)
        assert before.keys() == after.keys()
        assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("proj.weight"))

    @pytest.mark.parametrize("n", [3, 5])
    def test_uneven_batch_matches_full_batch_gradient(self, group, model_path, n):
        """n sequences on 2 ranks with micro batches of 2: shares get padded, and the step's gradient (its norm,
        before clipping) is still exactly the gradient of the token mean over the whole batch."""
        batch = on_policy(group, make_batch(n, seed=10 + n))
        model = hf_model(model_path, gathered(group)).train()
        logp = hf_batch_logprobs(model, batch)
        loss, _ = policy_loss(logp, *(padded(getattr(batch, k), torch.float32)
                                      for k in ("old_logprobs", "advantages", "loss_mask")))
        loss.backward()
        expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))

        metrics = group.train_step(batch)  # group calls time out (TIMEOUT) rather than hang on a deadlock
        assert metrics["grad_norm"] == pytest.approx(float(expected), rel=1e-4)
        assert metrics["loss"] == pytest.approx(loss.item(), abs=1e-5)
        assert metrics["tokens"] == sum(map(sum, batch.loss_mask))

    def test_checkpoint_restores_weights_and_optimizer(self, group, tmp_path):
        b1, b2 = make_batch(6, seed=21), make_batch(6, seed=22)
        group.train_step(on_policy(group, b1))
        after_1 = gathered(group)
        group.save_checkpoint(tmp_path / "ckpt", {"step": 1, "cursor": 42})
        b2 = on_policy(group, b2)  # fixed old_logprobs, so both step-2s see identical inputs
        group.train_step(b2)
        state_a = gathered(group)

        client_state = group.load_checkpoint(tmp_path / "ckpt")
        assert client_state["step"] == 1 and client_state["cursor"] == 42
        restored = gathered(group)
        assert all(torch.equal(after_1[k], restored[k]) for k in after_1)
        group.train_step(b2)
        state_b = gathered(group)
        # Fresh Adam moments would give a different second step (the first Adam step is ~lr * sign(grad)).
        assert max((state_a[k] - state_b[k]).abs().max().item() for k in state_a) < 1e-6

    def test_save_hf_writes_a_loadable_folder(self, group, tmp_path):
        from transformers import AutoModelForCausalLM

        group.save_hf(tmp_path / "hf")
        sd = gathered(group)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in sd.items())
        assert torch.equal(model.lm_head.weight, sd["model.embed_tokens.weight"])  # still tied
        assert (tmp_path / "hf" / "chat_template.jinja").read_text() == "{{ messages }}"


def test_kl_to_reference_starts_at_zero_and_grows(ray_cluster, model_path):
    group = LearnerGroup(LearnerSettings(model_path=str(model_path), lr=1e-3, micro_batch_size=4, kl_coef=0.1),
                         num_ranks=2, timeout_s=TIMEOUT)
    try:
        assert all(s["reference_model"] for s in group.stats())
        batch = make_batch(4, seed=3)
        steps = [group.train_step(on_policy(group, batch)) for _ in range(3)]
        assert all(m["lr"] == 1e-3 for m in steps)  # no schedule: RL keeps the configured lr
        kls = [m["kl"] for m in steps]
        assert abs(kls[0]) < 1e-7  # the policy is the reference until the first update
        assert kls[-1] > 1e-6
        # Reference logprobs computed once (a batch reused by several PPO updates) are the initial weights' on the
        # loss tokens, and the step's KL from them is k3(policy || reference) over those tokens.
        ref = group.logprobs(batch, reference=True)
        want = hf_logprobs(hf_model(model_path), batch)
        on_mask = [(r[t], w[t]) for r, w, m in zip(ref, want, batch.loss_mask) for t in range(len(m)) if m[t]]
        assert max(abs(a - b) for a, b in on_mask) < 1e-5
        policy = group.logprobs(batch)
        log_ratio = [p[t] - r[t] for p, r, m in zip(policy, ref, batch.loss_mask) for t in range(len(m)) if m[t]]
        k3 = sum(math.exp(-x) - 1 + x for x in log_ratio) / len(log_ratio)
        m = group.train_step(replace(on_policy(group, batch), ref_logprobs=ref))
        assert m["kl"] == pytest.approx(k3, rel=1e-4) and k3 > 1e-6
    finally:
        group.shutdown()


def test_num_cpus_gives_a_rank_its_cpus_as_torch_threads(ray_cluster, model_path):
    """learner.num_cpus: each rank reserves that many CPUs and runs as many torch threads (a laptop with more cores
    than ranks trains on all of them; Ray alone would give each rank one thread)."""
    group = LearnerGroup(LearnerSettings(model_path=str(model_path), num_cpus=2), num_ranks=1, timeout_s=TIMEOUT)
    try:
        assert [s["threads"] for s in group.stats()] == [2]
        assert ray.available_resources().get("CPU", 0) == 0  # the cluster's 2 CPUs are the rank's bundle
    finally:
        group.shutdown()


class _GroupOfferedATakenPortFirst(LearnerGroup):
    """Its first rendezvous port is one another process listens on: what a port taken between its choice and rank
    0's bind looks like (two runs starting side by side on one node)."""

    taken_port: int = 0
    offered: list = []

    def _rendezvous(self, timeout_s):
        addr, port = super()._rendezvous(timeout_s)
        port = port if self.offered else self.taken_port
        self.offered.append(port)
        return addr, port


def test_a_taken_rendezvous_port_starts_the_group_again_on_a_fresh_one(ray_cluster, model_path):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        _GroupOfferedATakenPortFirst.taken_port = taken.getsockname()[1]
        group = _GroupOfferedATakenPortFirst(LearnerSettings(model_path=str(model_path)), num_ranks=1,
                                             timeout_s=TIMEOUT)
    try:
        offered = _GroupOfferedATakenPortFirst.offered
        assert len(offered) == 2 and offered[0] == _GroupOfferedATakenPortFirst.taken_port != offered[1]
        assert group.master_port == offered[1] and [i["rank"] for i in group.info] == [0]
        assert ray.available_resources().get("CPU", 0) == 1  # the retry stayed in the group's one bundle
    finally:
        group.shutdown()


def test_the_rendezvous_port_is_free_and_below_the_ephemeral_range():
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for _ in range(5):
        port = free_port_outside_ephemeral_range()
        assert 20000 <= port < low or low <= 20000
        with socket.socket() as s:
            s.bind(("", port))  # still free: the choice closed its probe


def test_a_rank_starts_without_compiling_what_it_never_uses(model_path, tmp_path):
    """DeepSpeed's comm backend would JIT-build its shared-memory all-reduce (~1 min of g++ on 2 cores) into
    TORCH_EXTENSIONS_DIR when a rank starts, and its Muon module would torch.compile three kernels (importing
    torch's inductor) when the optimizer is built; the rank skips both and still trains (one rank, no Ray, gloo)."""
    extensions = tmp_path / "torch_extensions"
    extensions.mkdir()
    probe = f"""
from actors.learner import LearnerRank, LearnerSettings
from deepspeed.comm import comm
from tests.test_learner import make_batch
rank = LearnerRank(LearnerSettings(model_path={str(model_path)!r}), 0, 1, "127.0.0.1",
                   {free_port_outside_ephemeral_range()}, use_gpu=False)
batch = make_batch(2, seed=0)
batch.old_logprobs = rank.logprobs(batch)
import sys
from deepspeed.runtime.zero.muon import muon_optimizer
print(comm.cdb.shm_comm_op, rank.train_step(batch)["tokens"] > 0, "torch._inductor.compile_fx" in sys.modules,
      rank.engine.optimizer.use_muon, muon_optimizer.MuonWithAuxAdam.__module__)
"""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "None True False False deepspeed.runtime.zero.muon.muon_optimizer"
    assert list(extensions.iterdir()) == [] and "built successfully" not in out.stdout


def test_sampling_temperature_sft_lr_schedule_and_demonstration_term(ray_cluster, model_path):
    """One group for three settings (a group costs ~20 s to start). temperature: logprobs are those of
    softmax(logits / T), what vLLM's processed logprobs give at that temperature, so PPO ratios start at 1.
    lr_schedule_steps (rl.sft): DeepSpeed's scheduler really drives the optimizer's lr: up to the peak, then down.
    demo_coef: a step with demonstrations follows the gradient of the policy loss + demo_coef x their mean NLL per
    token, the NLL untempered (rl.sft's objective) while the policy loss is tempered."""
    group = LearnerGroup(LearnerSettings(model_path=str(model_path), lr=1e-3, micro_batch_size=2, lr_schedule_steps=4,
                                         temperature=0.5, demo_coef=0.5), num_ranks=2, timeout_s=TIMEOUT)
    try:
        batch = make_batch(4, seed=4)
        model = hf_model(model_path)
        with torch.no_grad():
            want = [token_logprobs(model(torch.tensor([ids])).logits / 0.5, torch.tensor([ids]))[0].tolist()
                    for ids in batch.input_ids]
        got = group.logprobs(replace(batch, loss_mask=None))
        assert max(abs(a - b) for r1, r2 in zip(got, want) for a, b in zip(r1, r2)) < 1e-5
        assert max(abs(a - b) for r1, r2 in zip(got, hf_logprobs(model, batch)) for a, b in zip(r1, r2)) > 0.1
        steps = [group.train_step(on_policy(group, batch)) for _ in range(4)]
        # the loss's own logprobs (the training forward) are tempered too: on-policy ratios are exactly 1
        assert all(abs(m["approx_kl"]) < 1e-6 and m["clip_fraction"] == 0 for m in steps), steps
        lrs = [m["lr"] for m in steps]
        peak = lrs.index(max(lrs))  # measured: [0, 5e-4, 1e-3, 5e-4] (DeepSpeed warms up over >= 2 steps)
        assert lrs[peak] == pytest.approx(1e-3) and 0 < peak < len(lrs) - 1, lrs
        assert lrs[:peak + 1] == sorted(lrs[:peak + 1]) and lrs[peak:] == sorted(lrs[peak:], reverse=True), lrs

        # 3 episodes and 3 demonstrations of other lengths on 2 ranks with micro batches of 2: both get padded
        batch, demo = on_policy(group, make_batch(3, seed=5)), make_batch(3, seed=6, lo=30, hi=60)
        model = hf_model(model_path, gathered(group)).train()
        pg, _ = policy_loss(hf_batch_logprobs(model, batch, temperature=0.5),
                            *(padded(getattr(batch, k), torch.float32) for k in ("old_logprobs", "advantages",
                                                                                   "loss_mask")))
        demo_mask = padded(demo.loss_mask, torch.float32)
        nll = -(hf_batch_logprobs(model, demo) * demo_mask).sum() / demo_mask.sum()
        (pg + 0.5 * nll).backward()
        expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        m = group.train_step(batch, demo)
        assert m["grad_norm"] == pytest.approx(float(expected), rel=1e-4)
        assert m["demo_nll"] == pytest.approx(nll.item(), rel=1e-5)
        assert m["loss"] == pytest.approx((pg + 0.5 * nll).item(), abs=1e-5)
        assert "demo_nll" not in steps[0]  # no demonstrations, no term

        # the demonstrations alone (rl.sft's step): demo_coef x their NLL, no policy loss
        model = hf_model(model_path, gathered(group)).train()
        nll = -(hf_batch_logprobs(model, demo) * demo_mask).sum() / demo_mask.sum()
        (0.5 * nll).backward()
        expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        m = group.train_step(None, demo)
        assert m["grad_norm"] == pytest.approx(float(expected), rel=1e-4)
        assert m["demo_nll"] == pytest.approx(nll.item(), rel=1e-5) and m["tokens"] == 0
        with pytest.raises(ValueError, match="needs a batch, demonstrations or both"):
            group.train_step(None)
    finally:
        group.shutdown()


def test_new_schedule_continues_like_a_fresh_learner_on_the_same_weights(ray_cluster, model_path, tmp_path):
    """rl.rft's rounds keep the ranks: new_schedule must leave them as a learner started from the saved weights would
    be (Adam's moments of the last stage dropped, the warm-up and decay over the new stage's steps), or a round would
    train differently in one program than in one program per round."""
    settings = LearnerSettings(model_path=str(model_path), micro_batch_size=2, demo_coef=1.0, kl_coef=0.0)
    demos = [make_batch(4, seed=30 + i) for i in range(4)]
    kept = LearnerGroup(replace(settings, lr=3e-3, lr_schedule_steps=3), num_ranks=2, timeout_s=TIMEOUT)
    try:
        for demo in demos[:3]:  # a first stage: its moments would change the next stage's steps
            kept.train_step(None, demo)
        kept.save_hf(tmp_path / "stage1")
        kept.new_schedule(1e-3, 4)
        lrs_kept = [kept.train_step(None, demo)["lr"] for demo in demos]
        weights_kept = gathered(kept)
    finally:
        kept.shutdown()
    fresh = LearnerGroup(replace(settings, model_path=str(tmp_path / "stage1"), lr=1e-3, lr_schedule_steps=4),
                         num_ranks=2, timeout_s=TIMEOUT)
    try:
        lrs_fresh = [fresh.train_step(None, demo)["lr"] for demo in demos]
        weights_fresh = gathered(fresh)
    finally:
        fresh.shutdown()
    assert lrs_kept == lrs_fresh and max(lrs_kept) == pytest.approx(1e-3)
    assert max((weights_kept[k] - weights_fresh[k]).abs().max().item() for k in weights_kept) < 1e-6


def grouped_batch(seed):
    """12 episodes, 6 per rank, micro batches of 4 then 2. Rank 0: a GRPO group of 4 sharing a 30-token prompt
    (continuations of 3-25 tokens, some loss inside the prompt's last turn too), then 2 sharing 25 tokens. Rank 1: 3
    sharing 30 tokens and one that shares only their first 20 (another ticket after the same system prompt), then 2
    that differ from their first token (nothing to share)."""
    g = torch.Generator().manual_seed(seed)

    def tokens(n):
        return torch.randint(1, VOCAB, (n,), generator=g).tolist()

    def episode(prompt, loss_from):
        tail = tokens(int(torch.randint(3, 26, (), generator=g)))
        ids = prompt + tail
        mask = [0] * loss_from + [1] * (len(ids) - loss_from)
        adv = float(torch.randn((), generator=g))
        return ids, mask, [adv * x for x in mask]

    p0, p1, p2 = tokens(30), tokens(25), tokens(30)
    other = p2[:20] + tokens(10)
    rows = ([episode(p0, 26) for _ in range(4)] + [episode(p1, 25) for _ in range(2)]
            + [episode(p2, 30) for _ in range(3)] + [episode(other, 30)]
            + [episode([1 + i] + tokens(29), 30) for i in range(2)])
    ids, mask, adv = map(list, zip(*rows))
    return TrainBatch(input_ids=ids, loss_mask=mask, advantages=adv)


def test_shared_prefix_len():
    assert shared_prefix_len([[1] * 40, [1] * 30 + [2] * 10]) == 30
    assert shared_prefix_len([[1] * 40, [1] * 40]) == 39  # each row keeps a token of its own
    assert shared_prefix_len([[1] * 40, [1] * 10 + [2] * 30]) == 0  # too short to share
    assert shared_prefix_len([[1] * 40]) == 0
    batch = grouped_batch(0)
    assert [shared_prefix_len(batch.input_ids[a:b]) for a, b in ((0, 4), (4, 6), (6, 10), (10, 12))] == [30, 25, 20, 0]


def test_shared_prefix_step_equals_the_unshared_computation(ray_cluster, model_path):
    """learner.shared_prefix: each micro batch's common prefix runs once and its continuations on top of its cached
    keys and values. Logprobs, reference logprobs, the loss and the gradient are those of plain HF forwards of the
    full padded sequences, on 2 ranks whose micro batches share different prefixes (one shares nothing)."""
    group = LearnerGroup(LearnerSettings(model_path=str(model_path), lr=1e-3, micro_batch_size=4, kl_coef=0.1,
                                         shared_prefix=True), num_ranks=2, timeout_s=TIMEOUT)
    try:
        batch = grouped_batch(0)
        model = hf_model(model_path)
        want = hf_logprobs(model, batch)
        everywhere = [[1] * len(r) for r in batch.input_ids]
        for reference, loss_mask in ((False, None), (False, batch.loss_mask), (True, batch.loss_mask)):
            got = group.logprobs(replace(batch, loss_mask=loss_mask), reference=reference)
            keep = loss_mask or everywhere  # with a loss mask, computed on its tokens only
            assert max(abs(a - b) for r1, r2, k in zip(got, want, keep) for a, b, x in zip(r1, r2, k) if x) < 1e-5
        group.train_step(on_policy(group, batch))  # the policy moves away from the reference: KL > 0 below

        batch = on_policy(group, grouped_batch(1))
        model = hf_model(model_path, gathered(group)).train()
        ref = hf_model(model_path)
        with torch.no_grad():
            ref_logp = hf_batch_logprobs(ref, batch)
        loss, stats = policy_loss(hf_batch_logprobs(model, batch),
                                  *(padded(getattr(batch, k), torch.float32)
                                    for k in ("old_logprobs", "advantages", "loss_mask")),
                                  ref_logp=ref_logp, kl_coef=0.1)
        loss.backward()
        expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        m = group.train_step(batch)
        assert m["kl"] == pytest.approx(stats["kl"], rel=1e-5) and m["kl"] > 0
        assert m["loss"] == pytest.approx(loss.item(), rel=1e-5)
        assert m["grad_norm"] == pytest.approx(float(expected), rel=1e-5)
    finally:
        group.shutdown()


def test_a_rank_that_fails_to_start_is_named(ray_cluster, tmp_path):
    with pytest.raises(RuntimeError, match=r"(?s)learner rank \d failed to start: .*not a HF model folder"):
        LearnerGroup(LearnerSettings(model_path=str(tmp_path / "missing")), num_ranks=2, init_timeout_s=120)


class _RankThatHangs(LearnerRank):
    """Rank 1 never answers a train step (a stuck collective, a hung device): the others wait on it in ZeRO-3."""

    def train_step(self, batch, demo=None):
        if self.rank == 1:
            time.sleep(3600)
        return super().train_step(batch, demo)


class _GroupWithAHangingRank(LearnerGroup):
    actor_class = ray.remote(_RankThatHangs)


def test_a_hung_rank_fails_the_call_within_the_timeout(ray_cluster, model_path):
    """The driver's learner calls end after learner.timeout_s with the ranks named (rl.train then rebuilds the group
    from the last checkpoint), instead of waiting forever."""
    group = _GroupWithAHangingRank(LearnerSettings(model_path=str(model_path), micro_batch_size=2), num_ranks=2,
                                   timeout_s=15)
    try:
        batch = on_policy(group, make_batch(4, seed=7))
        t0 = time.monotonic()
        with pytest.raises(LearnerFailed, match=r"learner ranks \[0, 1\] did not answer within 15s"):
            group.train_step(batch)
        assert time.monotonic() - t0 < 60
    finally:
        group.shutdown()
