"""Reward mixing (rl/rewards.py) and the reward actor's contract."""
import pytest

from actors.reward_actor import RewardActorImpl
from rl.rewards import RewardWeights, score_episode


def _eval(reward, env_frac, act_frac, tool_errors=0):
    return {"reward": reward, "success": reward == 1.0, "env_assertion_fraction": env_frac,
            "action_fraction": act_frac, "tool_errors": tool_errors}


def test_checks_only_is_tau2_reward():
    reward, comp = score_episode(_eval(0.0, 0.5, 0.5), rejected_calls=3, w=RewardWeights())
    assert reward == 0.0 and comp["tau2"] == 0.0 and comp["env_assertions"] == 0.5 and comp["penalty"] == 0.0


def test_partial_credit_and_capped_penalty():
    w = RewardWeights(task_weight=1.0, env_assertion_weight=0.5, action_weight=0.25,
                      malformed_call_penalty=0.1, max_penalty=0.3)
    reward, comp = score_episode(_eval(0.0, 0.5, 1.0, tool_errors=2), rejected_calls=5, w=w)
    assert comp["penalty"] == pytest.approx(0.3)  # 5 x 0.1 capped at 0.3
    assert reward == pytest.approx(0.5 * 0.5 + 0.25 * 1.0 - 0.3)
    assert comp["malformed_calls"] == 5 and comp["tool_errors"] == 2


def test_success_outranks_any_partial_credit_with_default_style_weights():
    w = RewardWeights(env_assertion_weight=0.25, action_weight=0.25, malformed_call_penalty=0.05)
    solved, _ = score_episode(_eval(1.0, 1.0, 1.0), rejected_calls=2, w=w)
    almost, _ = score_episode(_eval(0.0, 0.99, 0.99), rejected_calls=0, w=w)
    assert solved > almost


def test_reward_actor_scores_trajectories_in_order():
    actor = RewardActorImpl(RewardWeights(action_weight=1.0))
    out = actor.score([{"eval": _eval(1.0, 1.0, 1.0)}, {"eval": _eval(0.0, 0.0, 0.5), "rejected_calls": 1}])
    assert [o["reward"] for o in out] == [2.0, 0.5] and out[1]["components"]["malformed_calls"] == 1.0
