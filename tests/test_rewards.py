"""Reward mixing (rl/rewards.py) and the reward actor's contract."""
from types import SimpleNamespace

import pytest

from actors.reward_actor import RewardActorImpl
from envs.tau2_telecom.session import EvalResult
from rl.config import RewardConfig
from rl.contracts import Trajectory
from rl.rewards import check_score


def _checks(n_met: int, n: int) -> list[dict]:
    return [{"met": i < n_met} for i in range(n)]


def _eval(reward, env_frac, act_frac, tool_errors=0, rejected_calls=0):
    """A real EvalResult whose assertion / action fractions are env_frac / act_frac (multiples of 1/4)."""
    return EvalResult(task_id="t", reward=reward, success=reward == 1.0, termination="agent_stop",
                      reward_basis=["ENV_ASSERTION"], env_assertions=_checks(round(env_frac * 4), 4),
                      actions=_checks(round(act_frac * 4), 4), communicate=[], nl_assertions=None, db_match=None,
                      turns=1, tool_errors=tool_errors, rejected_calls=rejected_calls)


def _traj(evaluation, messages=None, group=0, nl_assertions=()):
    return Trajectory(task_id="t", group=group, messages=messages or [], eval=evaluation,
                      nl_assertions=list(nl_assertions))


def score_episode(evaluation, w):  # checks-only: the reward with no soft part
    return check_score(evaluation, w)


def test_checks_only_is_tau2_reward():
    reward, comp = score_episode(_eval(0.0, 0.5, 0.5, rejected_calls=3), w=RewardConfig())
    assert reward == 0.0 and comp["tau2"] == 0.0 and comp["env_assertions"] == 0.5 and comp["penalty"] == 0.0


def test_partial_credit_and_capped_penalty():
    w = RewardConfig(task_weight=1.0, env_assertion_weight=0.5, action_weight=0.25,
                      malformed_call_penalty=0.1, max_penalty=0.3)
    reward, comp = score_episode(_eval(0.0, 0.5, 1.0, tool_errors=2, rejected_calls=5), w=w)
    assert comp["penalty"] == pytest.approx(0.3)  # 5 x 0.1 capped at 0.3
    assert reward == pytest.approx(0.5 * 0.5 + 0.25 * 1.0 - 0.3)
    assert comp["malformed_calls"] == 5 and comp["tool_errors"] == 2


def test_success_outranks_any_partial_credit_with_default_style_weights():
    w = RewardConfig(env_assertion_weight=0.25, action_weight=0.25, malformed_call_penalty=0.05)
    solved, _ = score_episode(_eval(1.0, 1.0, 1.0, rejected_calls=2), w=w)
    almost, _ = score_episode(_eval(0.0, 0.75, 0.75), w=w)
    assert solved > almost


def test_reward_actor_scores_trajectories_in_order():
    actor = RewardActorImpl(RewardConfig(action_weight=1.0))
    out = actor.score([_traj(_eval(1.0, 1.0, 1.0)), _traj(_eval(0.0, 0.0, 0.5, rejected_calls=1))])
    assert [o.reward for o in out] == [2.0, 0.5] and out[1].components["malformed_calls"] == 1.0


# ---- hybrid mixing ---------------------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rl.config import ConfigError, load_config  # noqa: E402
from rl.rewards import mix  # noqa: E402


def test_weighted_and_multiplicative_arithmetic():
    w = RewardConfig(rm_weight=0.5, judge_weight=0.25)
    assert mix([1.0, 0.0], [0.8, 0.2], [1.0, None], [0, 0], w) == pytest.approx([1.0 + 0.4 + 0.25, 0.1])
    m = RewardConfig(rm_weight=0.5, judge_weight=0.25, mixing="multiplicative")
    # factor = 1 - 0.75 + soft; a missing judge counts as met (neutral), a failure stays 0
    assert mix([1.0, 1.0, 0.0], [0.8, 0.2, 1.0], [1.0, None, 1.0], [0, 0, 0], m) == pytest.approx(
        [0.25 + 0.4 + 0.25, 0.25 + 0.1 + 0.25, 0.0])


def test_gated_squeezes_soft_scores_below_half_the_gap_between_outcomes():
    w = RewardConfig(env_assertion_weight=0.5, rm_weight=0.4, mixing="gated")
    checks = [1.5, 0.25, 0.0, 0.0]  # group 0: gap 0.25 between the two failures' partial credit
    out = mix(checks, [0.0, 0.0, 1.0, 0.5], [None] * 4, [0, 0, 0, 1], w)
    assert out[0] == 1.5 and out[1] == 0.25
    assert out[2] == pytest.approx(0.49 * 0.25)  # squeezed: still below the 0.25 of the next outcome up
    assert out[3] == pytest.approx(0.4 * 0.5)  # group 1 has one outcome level: the full soft weight applies


episodes = st.lists(st.tuples(st.integers(0, 3),  # task group
                              st.booleans(),  # verified success
                              st.floats(0, 1), st.floats(0, 1),  # env assertion / action fractions
                              st.integers(0, 5),  # rejected calls
                              st.floats(0, 1), st.one_of(st.none(), st.floats(0, 1))),  # rm, judge
                    min_size=1, max_size=12)
weights = st.fixed_dictionaries({"env_assertion_weight": st.floats(0, 1), "action_weight": st.floats(0, 1),
                                 "malformed_call_penalty": st.floats(0, 0.5), "max_penalty": st.floats(0, 1),
                                 "rm_weight": st.floats(0, 2), "judge_weight": st.floats(0, 1)})


@settings(max_examples=300, deadline=None)
@given(episodes, weights, st.floats(0.01, 3))
def test_gated_never_ranks_a_failure_above_a_success_of_the_same_task(batch, kw, headroom):
    # Any configuration the loader accepts for gated mixing: task_weight above the bound it enforces.
    bound = (kw["env_assertion_weight"] + kw["action_weight"] + kw["rm_weight"] + kw["judge_weight"]
             + (kw["max_penalty"] if kw["malformed_call_penalty"] > 0 else 0))
    w = RewardConfig(task_weight=bound + headroom, mixing="gated", **kw)
    checks, groups, success = [], [], []
    for group, ok, env, act, rejected, _, _ in batch:
        # Any fractions, not only those an EvalResult's lists give: the formula is what is under test.
        c, _ = check_score(SimpleNamespace(reward=float(ok), success=ok, env_assertion_fraction=1.0 if ok else env,
                                           action_fraction=act, tool_errors=0, rejected_calls=rejected), w)
        checks.append(c)
        groups.append(group)
        success.append(ok)
    rewards = mix(checks, [b[5] for b in batch], [b[6] for b in batch], groups, w)
    for i in range(len(batch)):
        for j in range(len(batch)):
            if groups[i] == groups[j] and checks[i] < checks[j] - 1e-9:
                assert rewards[i] < rewards[j]  # the soft part never flips two verified outcomes
            if groups[i] == groups[j] and success[i] and not success[j]:
                assert rewards[i] > rewards[j]
    # Scored alone (no group context, as in the OpenRLHF plugin) a success still beats any failure.
    alone = [mix([c], [b[5]], [b[6]], [0], w)[0] for c, b in zip(checks, batch)]
    if any(success) and not all(success):
        assert min(a for a, ok in zip(alone, success) if ok) > max(a for a, ok in zip(alone, success) if not ok)


def test_config_rejects_mixings_that_cannot_keep_their_promise():
    with pytest.raises(ConfigError, match="reward.task_weight.*gated"):
        load_config(None, ["reward.mixing=gated", "reward.rm_weight=1", "reward.rm_path=x"])
    with pytest.raises(ConfigError, match="reward.rm_weight.*multiplicative"):
        load_config(None, ["reward.mixing=multiplicative", "reward.rm_weight=0.8", "reward.rm_path=x",
                           "reward.judge_weight=0.5", "judge.model=openai/j"])
    with pytest.raises(ConfigError, match="judge.model"):
        load_config(None, ["reward.judge_weight=0.5"])


def test_reward_actor_adds_the_learned_score_and_logs_it(untrained_rm):
    from rl.rm.model import RewardModelScorer, normalise

    cfg = RewardConfig(rm_path=untrained_rm, rm_weight=0.5, rm_max_len=128)
    conv = [{"role": "user", "content": "No service."}, {"role": "assistant", "content": "Fixed it."}]
    conv2 = [{"role": "user", "content": "No service."}, {"role": "assistant", "content": "Transferring you."}]
    out = RewardActorImpl(cfg).score([_traj(_eval(1.0, 1.0, 1.0), conv), _traj(_eval(0.0, 0.5, 0.0), conv2)])
    scorer = RewardModelScorer(untrained_rm, max_len=128)
    expected = normalise(scorer.score([conv, conv2]), "train_stats", scorer.stats)
    assert [o.components["rm"] for o in out] == pytest.approx(expected)
    assert [o.reward for o in out] == pytest.approx([1.0 + 0.5 * expected[0], 0.5 * expected[1]])
    assert "judge" not in out[0].components  # no judge configured: the component is absent, not 0


def test_reward_actor_asks_the_judge_about_nl_assertions_only_where_a_task_has_them():
    from envs.tau2_telecom.endpoint import LLMEndpoint
    from tests.openai_stub import ScriptedOpenAI

    conv = [{"role": "user", "content": "My MMS fails."}, {"role": "assistant", "content": "Sorry! Fixed: APN reset."}]
    with ScriptedOpenAI([{"content": "1: MET\n2: NOT_MET"}]) as server:
        endpoint = LLMEndpoint(model="openai/judge", base_url=server.base_url)
        actor = RewardActorImpl(RewardConfig(judge_weight=0.5), endpoint)
        out = actor.score([_traj(_eval(1.0, 1.0, 1.0), conv, nl_assertions=["Agent apologises", "Agent says why"]),
                           _traj(_eval(1.0, 1.0, 1.0), conv)])
        assert len(server.requests) == 1  # one batched call; the episode without assertions costs nothing
        shown = "\n".join(m["content"] for m in server.requests[0]["messages"])
        assert "Agent apologises" in shown and "Agent says why" in shown and "length" in shown.lower()
    assert out[0].components["judge"] == 0.5 and out[0].reward == pytest.approx(1.0 + 0.5 * 0.5)
    assert "judge" not in out[1].components and out[1].reward == 1.0


def test_a_non_finite_reward_model_score_is_rejected_not_clamped_to_one():
    from rl.rm.model import normalise

    stats = {"mean": 0.0, "std": 1.0}
    assert normalise([0.0, 1e9], "train_stats", stats) == [0.5, pytest.approx(1.0)]
    for how in ("train_stats", "batch"):
        with pytest.raises(ValueError, match=r"non-finite scores \(nan\) for 1 of 3 episodes \(first: index 1\)"):
            normalise([0.2, float("nan"), 0.1], how, stats)
