"""build_train_batch: trajectories + scores -> the learner's batch (a pure function of the driver)."""
import random

import pytest

from envs.tau2_telecom.session import EvalResult
from rl.config import AlgorithmConfig
from rl.contracts import Score, Trajectory
from rl.cursor import ShuffledCursor
from rl.train import EpisodeFailures, build_train_batch, check_failures, check_staleness, episode_metrics, minibatches


def _traj(group: int, generated: int, prompt: int = 3, failure: str | None = None,
          success: bool = False) -> Trajectory:
    evaluation = EvalResult(task_id=f"t{group}", reward=float(success), success=success, termination="agent_stop",
                            reward_basis=[], env_assertions=[], actions=[], communicate=[], nl_assertions=None,
                            db_match=None, turns=1, tool_errors=0, rejected_calls=0,
                            note=failure and f"{failure}: endpoint refused", failure=failure)
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
    # episodes arriving interleaved (as they finish) leave grouped: a group's prompt is shared by the learner
    mixed = [_traj(1, 2), _traj(0, 3), _traj(1, 4), _traj(0, 5)]
    batch = build_train_batch(mixed, [Score(1.0, {}), Score(1.0, {}), Score(0.0, {}), Score(0.0, {})],
                              AlgorithmConfig(name="grpo"))
    assert batch.input_ids == [mixed[1].token_ids, mixed[3].token_ids, mixed[0].token_ids, mixed[2].token_ids]


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


def test_rft_trains_on_the_verified_successes_only_whatever_the_reward_mix_says():
    # Partial credit ranks a failure above another failure; rejection sampling keeps only tau2's passes, each with
    # advantage 1 (a plain NLL gradient), including a group where every episode passed (GRPO gives it nothing).
    trajs = [_traj(0, 2, success=True), _traj(0, 4), _traj(0, 3), _traj(1, 2, success=True), _traj(1, 1, success=True)]
    scores = [Score(1.2, {}), Score(0.5, {}), Score(0.1, {}), Score(1.0, {}), Score(1.0, {})]
    batch = build_train_batch(trajs, scores, AlgorithmConfig(name="rft"))
    assert batch.input_ids == [trajs[0].token_ids, trajs[3].token_ids, trajs[4].token_ids]
    for adv, mask in zip(batch.advantages, batch.loss_mask):
        assert adv == [float(m) for m in mask]
    assert build_train_batch(trajs[1:3], scores[1:3], AlgorithmConfig(name="rft")) is None  # no success: no step


def test_minibatches_cover_every_sequence_once_per_epoch_in_fresh_orders():
    parts = minibatches(10, update_epochs=3, num_minibatches=4, rng=random.Random(0))
    assert len(parts) == 12 and all(2 <= len(p) <= 3 for p in parts)
    epochs = [sum(parts[e * 4:(e + 1) * 4], []) for e in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3  # reshuffled every pass
    assert all(p == sorted(p) for p in parts)  # in batch order inside a part: a group's episodes stay together
    # fewer sequences than mini-batches: one sequence each, no empty optimizer step
    assert sorted(len(p) for p in minibatches(3, 1, 8, random.Random(0))) == [1, 1, 1]
    assert minibatches(5, 1, 1, random.Random(0))[0] != [] and len(minibatches(5, 2, 1, random.Random(0))) == 2


def test_shuffled_cursor_gives_each_item_once_per_pass_and_resumes_where_it_stopped():
    cursor = ShuffledCursor(list(range(5)), seed=3)
    first, second = cursor.take(5), cursor.take(5)
    assert sorted(first) == sorted(second) == list(range(5)) and first != second  # a fresh order each pass
    cursor = ShuffledCursor(list(range(5)), seed=3)
    head = cursor.take(3)
    resumed = ShuffledCursor(list(range(5)), seed=3)
    resumed.restore(cursor.state())
    assert head + resumed.take(7) == first + second  # across the pass boundary too


def test_a_minibatch_keeps_its_rows_aligned():
    trajs = [_traj(0, 2), _traj(0, 4), _traj(1, 3), _traj(1, 1)]
    batch = build_train_batch(trajs, [Score(1.0, {}), Score(0.0, {}), Score(0.0, {}), Score(1.0, {})],
                              AlgorithmConfig(name="grpo"))
    part = batch.select([3, 0])
    assert part.input_ids == [batch.input_ids[3], batch.input_ids[0]]
    assert part.loss_mask == [batch.loss_mask[3], batch.loss_mask[0]]
    assert part.old_logprobs == [batch.old_logprobs[3], batch.old_logprobs[0]]
    assert part.advantages == [batch.advantages[3], batch.advantages[0]]


def test_failed_episodes_are_counted_and_too_many_stop_the_run():
    trajs = [_traj(0, 2), _traj(0, 2, failure="eval_failed"), _traj(1, 2, failure="user_error"),
             _traj(1, 2, failure="user_error")]
    m = episode_metrics(trajs, [Score(0.0, {})] * 4)
    assert m["episodes/eval_failed"] == 1 and m["episodes/user_error"] == 2
    check_failures(trajs, step=3, limit=3)  # 3 failed: at the limit, the run goes on
    check_failures(trajs, step=3, limit=None)  # default: only a step where every episode failed stops
    with pytest.raises(EpisodeFailures, match=r"step 3: 3 of 4 episodes .*1 eval_failed, 2 user_error.*"
                                              r"max_failed_episodes=2.*t0: eval_failed: endpoint refused"):
        check_failures(trajs, step=3, limit=2)
    with pytest.raises(EpisodeFailures, match="2 of 2"):
        check_failures(trajs[2:], step=1, limit=None)
    check_failures([_traj(0, 2)], step=1, limit=0)  # no failure, nothing to stop for


def test_staleness_bound_of_async_steps():
    trajs = [_traj(0, 2), _traj(0, 2), _traj(1, 2)]
    for t, version in zip(trajs, (4, 3, 4)):
        t.policy_version = version
    assert check_staleness(trajs, 4, bound=1) == 1  # one step off-policy: version 3 may train the learner at 4
    assert check_staleness(trajs[:1], 4, bound=0) == 0
    with pytest.raises(RuntimeError, match="policy version 3 while the learner is at 4: more than train.async_steps"):
        check_staleness(trajs, 4, bound=0)
    with pytest.raises(RuntimeError, match="version 3 while the learner is at 5"):
        check_staleness(trajs, 5, bound=1)
