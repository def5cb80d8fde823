"""The Bradley-Terry reward-model learner on real DeepSpeed ZeRO-3 ranks (gloo, 2 Ray actors, the tiny model)."""
import math

import pytest
import ray
import torch
import torch.nn.functional as F

from tests.conftest import REPO_ROOT


def _conversation(ticket: str, ending: str) -> list[dict]:
    return [{"role": "system", "content": "You are a telecom support agent."},
            {"role": "user", "content": ticket},
            {"role": "assistant", "content": ending}]


@pytest.fixture(scope="module")
def rm_group():
    from actors.rm_learner import RewardModelGroup, RewardModelSettings
    from rl.models import resolve_model

    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": REPO_ROOT}})
    path = str(resolve_model("tiny"))
    group = RewardModelGroup(RewardModelSettings(model_path=path, lr=3e-3, micro_batch_size=2), num_ranks=2,
                             use_gpu=False)
    yield group, path
    group.shutdown()
    ray.shutdown()


def _pairs(path: str):
    from transformers import AutoTokenizer

    from rl.rm.model import conversation_ids

    tok = AutoTokenizer.from_pretrained(path)
    tickets = ["My mobile data is slow.", "I cannot send MMS.", "No service on my phone.",
               "Roaming does not work abroad.", "My bill looks wrong."]
    pairs, convs = [], []
    for t in tickets:
        good = _conversation(t, "I re-enabled your line and the issue is resolved.")
        bad = _conversation(t, "I am transferring you to a human agent now.")
        pairs.append((conversation_ids(tok, good, 256), conversation_ids(tok, bad, 256), 0.0))
        convs.append((good, bad))
    return pairs, convs


def test_loss_is_the_batch_mean_over_ranks_and_training_separates_pairs(rm_group, tmp_path):
    from rl.rm.model import RM_META, RewardModelScorer, write_meta

    group, path = rm_group
    pairs, convs = _pairs(path)  # 5 pairs on 2 ranks: one filler pair that must weigh nothing
    before = group.scores([s for c, r, _ in pairs for s in (c, r)])
    diffs = [before[2 * i] - before[2 * i + 1] for i in range(len(pairs))]
    expected = sum(-F.logsigmoid(torch.tensor(d)).item() for d in diffs) / len(pairs)

    first = group.train_step(pairs)
    assert first["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert first["accuracy"] == pytest.approx(sum(d > 0 for d in diffs) / len(pairs))
    for _ in range(15):
        last = group.train_step(pairs)
    assert last["loss"] < first["loss"] * 0.5 and last["accuracy"] == 1.0

    # The saved folder scores like the ZeRO-3 ranks do (same pooling, same weights) with plain HF.
    after = group.scores([s for c, r, _ in pairs for s in (c, r)])
    group.save_hf(str(tmp_path / "rm"), {RM_META: write_meta(256, after, "tiny")})
    scorer = RewardModelScorer(str(tmp_path / "rm"))
    plain = scorer.score([side for good, bad in convs for side in (good, bad)])
    assert plain == pytest.approx(after, abs=1e-4)
    assert all(plain[2 * i] > plain[2 * i + 1] for i in range(len(pairs)))
    assert math.isfinite(scorer.stats["std"]) and scorer.stats["std"] > 0


def test_scorer_refuses_a_folder_that_is_not_a_reward_model(tmp_path):
    from rl.rm.model import RewardModelScorer

    with pytest.raises(FileNotFoundError, match="rl.rm.train"):
        RewardModelScorer(str(tmp_path))


def test_a_fresh_head_loads_quietly_and_a_missing_body_weight_is_named(tmp_path, capfd):
    """transformers prints a table for the scalar head a causal LM lacks (by design); only other gaps are reported."""
    import warnings

    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from rl.models import resolve_model
    from rl.rm.model import load_sequence_classifier

    base = str(resolve_model("tiny"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of ours either
        model = load_sequence_classifier(base)
    assert model.score.weight.shape[0] == 1
    assert "LOAD REPORT" not in capfd.readouterr().err

    broken = tmp_path / "broken"
    AutoModelForCausalLM.from_pretrained(base).save_pretrained(broken)
    weights = load_file(broken / "model.safetensors")
    dropped = next(k for k in weights if "layers.1." in k and k.endswith("o_proj.weight"))
    kept = {k: v for k, v in weights.items() if k != dropped}
    save_file(kept, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"initialised at random: .*layers\.1\.self_attn\.o_proj\.weight"):
        load_sequence_classifier(str(broken))


def test_pairs_are_dealt_so_each_micro_step_is_as_long_on_every_rank():
    from actors.rm_learner import deal_by_length

    lengths = [510, 512, 505, 120, 118, 130, 125, 490]  # tau2-like (~500) and TeleQnA-like (~120) sides
    shares = deal_by_length(lengths, 2)
    assert sorted(i for share in shares for i in share) == list(range(8))  # every row once
    for k in range(4):  # the k-th micro step: the two ranks' rows are neighbours in length
        a, b = (lengths[share[k]] for share in shares)
        assert abs(a - b) <= 25
    contiguous = [lengths[:4], lengths[4:]]  # what a plain split gives: 510 beside 118 in one micro step
    assert max(abs(x - y) for x, y in zip(*contiguous)) > 350
    with pytest.raises(ValueError, match="do not split evenly"):
        deal_by_length(lengths[:7], 2)
