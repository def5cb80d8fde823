"""EnvWorker actors on a real local Ray cluster: concurrent sessions, and recovery after a worker dies."""
import json

import pytest
import ray

from actors.env_worker import EnvPool, EnvSettings
from envs.tau2_telecom.oracle import oracle_turns
from envs.tau2_telecom.tasks import load_split


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])}})
    yield
    ray.shutdown()


def play_all(pool, tasks, mode, kill_after_turn=None):
    started = pool.reset_many(tasks, mode)
    sids = [sid for sid, _ in started]
    plans = {sid: oracle_turns(t, mode) for sid, t in zip(sids, tasks)}
    turn = 0
    while True:
        batch = [(sid, plans[sid][turn]) for sid in sids if turn < len(plans[sid])
                 and not pool.records[sid].counters["done"]]
        if not batch:
            break
        if turn == kill_after_turn:
            ray.kill(pool.workers[0], no_restart=False)  # simulate a crash; Ray restarts the actor empty
        pool.step_many(batch)
        turn += 1
    return sids, started


def test_pool_runs_many_concurrent_sessions_to_reward_1(ray_cluster):
    tasks = load_split("small")[:12]
    pool = EnvPool(EnvSettings(), num_workers=2)
    try:
        sids, started = play_all(pool, tasks, "dual")
        first = started[0][1]
        assert [m["role"] for m in first["messages"]] == ["system", "assistant", "user"] and first["tools"]
        results = pool.evaluate_many(sids)
        assert [r.reward for r in results] == [1.0] * len(tasks)
        assert {pool.records[s].worker for s in sids} == {0, 1}  # spread over both workers
        assert pool.recoveries == 0
        pool.close_many(sids)
        assert ray.get([w.num_sessions.remote() for w in pool.workers]) == [0, 0]
    finally:
        pool.shutdown()


def test_sessions_survive_a_worker_crash(ray_cluster):
    tasks = [t for t in load_split("base") if len(t.evaluation_criteria.actions) >= 4][:6]
    pool = EnvPool(EnvSettings(), num_workers=2, max_restarts=2)
    try:
        sids, _ = play_all(pool, tasks, "solo", kill_after_turn=2)
        assert pool.recoveries >= 1
        results = pool.evaluate_many(sids)
        assert [r.reward for r in results] == [1.0] * len(tasks)
        # The rebuilt sessions kept their whole history: the turns before the crash count.
        assert all(r.turns == len(oracle_turns(t, "solo")) for r, t in zip(results, tasks))
    finally:
        pool.shutdown()


def test_bad_turns_through_the_actor_are_error_observations(ray_cluster):
    pool = EnvPool(EnvSettings(), num_workers=1)
    try:
        sid, _ = pool.reset(load_split("small")[0], "solo")
        for junk in ["<tool_call>{{{</tool_call>", {"role": "assistant", "tool_calls": "nope"}, None, 12345,
                     '<tool_call>{"name": "__init__", "arguments": {}}</tool_call>']:
            obs = pool.step(sid, junk)
            assert obs["messages"] and all(m["content"].startswith("Error") for m in obs["messages"])
        assert len(pool.log(sid)["rejected"]) == 5
    finally:
        pool.shutdown()


def test_an_llm_customer_session_survives_a_worker_crash(ray_cluster):
    """Dual mode with tau2's LLM user simulator (over a stub OpenAI server): the EnvWorker dies after the opening;
    the rebuilt session's customer picks the conversation up from the session log and the episode succeeds."""
    from envs.tau2_telecom.endpoint import LLMEndpoint
    from tests.openai_stub import ScriptedOpenAI

    task = next(t for t in load_split("small") if t.id == "[service_issue]airplane_mode_on[PERSONA:None]")
    script = [{"content": "Hi, my phone has no service at all."},
              {"tool_calls": [("toggle_airplane_mode", {})]},
              {"content": "I turned airplane mode off and I have signal now. ###STOP###"}]
    with ScriptedOpenAI(script) as server:
        endpoint = LLMEndpoint(model="openai/stub-user", base_url=server.base_url)
        pool = EnvPool(EnvSettings(user="llm", user_llm=endpoint), num_workers=1, max_restarts=2)
        try:
            ((sid, first),) = pool.reset_many([task], "dual")
            assert first["messages"][-1]["content"] == "Hi, my phone has no service at all."
            ray.kill(pool.workers[0], no_restart=False)  # the crash; Ray restarts the actor empty
            (out,) = pool.step_many([(sid, "Please turn off airplane mode on your phone.")])
            assert pool.recoveries == 1
            assert out["done"] and out["termination"] == "user_stop", out
            (result,) = pool.evaluate_many([sid])
            assert result.success and result.failure is None
            # The rebuilt simulator was shown the conversation from before the crash (roles flipped by tau2).
            resumed = json.dumps(server.requests[1]["messages"])
            assert "Hi, my phone has no service at all." in resumed and "turn off airplane mode" in resumed
        finally:
            pool.shutdown()
