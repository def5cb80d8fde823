"""build_train_batch: trajectories + scores -> the learner's batch (a pure function of the driver)."""
import pytest

from envs.tau2_telecom.session import EvalResult
from rl.config import AlgorithmConfig
from rl.contracts import Score, Trajectory
from rl.train import build_train_batch


def _traj(group: int, generated: int, prompt: int = 3) -> Trajectory:
    evaluation = EvalResult(task_id=f"t{group}", reward=0.0, success=False, termination="agent_stop",
                            reward_basis=[], env_assertions=[], actions=[], communicate=[], nl_assertions=None,
                            db_match=None, turns=1, tool_errors=0, rejected_calls=0)
    n = prompt + generated
    return Trajectory(task_id=f"t{group}", group=group, messages=[], eval=evaluation, token_ids=list(range(n)),
                      loss_mask=[0] * prompt + [1] * generated, logprobs=[0.0] * prompt + [-0.5] * generated)


def test_group_advantages_rows_and_alignment():
    trajs = [_traj(0, 2), _traj(0, 4), _traj(1, 3), _traj(1, 1)]
    scores = [Score(1.0, {}), Score(0.0, {}), Score(0.5, {}), Score(0.5, {})]  # group 1 ties: no signal
    batch = build_train_batch(trajs, scores, AlgorithmConfig(name="grpo"))
    assert len(batch) == 2 and batch.input_ids == [trajs[0].token_ids, trajs[1].token_ids]
    assert batch.old_logprobs == [trajs[0].logprobs, trajs[1].logprobs]
    for row, adv, mask in zip(batch.input_ids, batch.advantages, batch.loss_mask):
        assert len(adv) == len(row) == len(mask)
        assert all(a == 0.0 for a, m in zip(adv, mask) if not m)  # advantages only where the loss is
    assert batch.advantages[0][-1] == pytest.approx(1.0, abs=1e-4)
    assert batch.advantages[1][-1] == pytest.approx(-1.0, abs=1e-4)


def test_nothing_to_train_is_none_and_kl_keeps_zero_advantage_rows():
    trajs = [_traj(0, 2), _traj(0, 2), _traj(1, 0), _traj(1, 2)]
    tied = [Score(0.0, {})] * 4
    assert build_train_batch(trajs, tied, AlgorithmConfig()) is None
    # With a KL term a zero-advantage row still has a gradient; a row with no sampled token never does.
    kl = build_train_batch(trajs, tied, AlgorithmConfig(kl_coef=0.1))
    assert len(kl) == 3 and trajs[2].token_ids not in kl.input_ids


def test_dynamic_sampling_drops_tied_groups_even_with_kl():
    trajs = [_traj(0, 2), _traj(0, 2), _traj(1, 2), _traj(1, 2)]
    scores = [Score(1.0, {}), Score(0.0, {}), Score(0.3, {}), Score(0.3, {})]
    batch = build_train_batch(trajs, scores, AlgorithmConfig(kl_coef=0.1, drop_zero_variance_groups=True))
    assert len(batch) == 2 and batch.input_ids == [trajs[0].token_ids, trajs[1].token_ids]
