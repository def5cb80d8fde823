"""The driver's actor calls under real faults: a real Ray actor that hangs or dies mid-call is replaced and the call
repeated once; a second failure stops with a message naming the actor and the key."""
import os
import time

import pytest
import ray

from rl.actor_calls import ActorFailed, ActorSlot, call_with_replacement


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@ray.remote(num_cpus=0)
class Scorer:
    def __init__(self, fault: str | None = None):
        self.fault = fault

    def score(self, xs: list[int]) -> list[int]:
        if self.fault == "hang":
            time.sleep(3600)  # a deadlocked judge call, a stuck engine
        if self.fault == "die":
            os._exit(1)  # the process is gone mid-call
        return [2 * x for x in xs]


def _builds(*faults):
    queue = list(faults)
    return lambda: Scorer.remote(queue.pop(0))


@pytest.mark.parametrize("fault", ["hang", "die"])
def test_a_failed_actor_is_replaced_and_the_call_repeated(ray_cluster, fault, capsys):
    first = Scorer.remote(fault)
    ray.get(first.__ray_ready__.remote(), timeout=60)  # started: what fails is the call, not a slow start
    slot = ActorSlot(first, build=_builds(None))
    started = time.monotonic()
    out = call_with_replacement(lambda a: a.score.remote([1, 2]), slot, "reward actor", 5.0, "reward.timeout_s")
    assert out == [2, 4] and slot.restarts == 1 and slot.actor is not first
    assert time.monotonic() - started < 40  # the hang cost the timeout, not the hour
    with pytest.raises(ray.exceptions.RayActorError):  # the hung one is killed, not left holding its CPU
        ray.get(first.score.remote([1]), timeout=30)
    err = capsys.readouterr().err
    assert "reward actor failed" in err and ("reward.timeout_s = 5 s" in err if fault == "hang" else "died" in err)


def test_a_second_failure_stops_with_the_actor_and_key_named(ray_cluster):
    slot = ActorSlot(Scorer.remote("hang"), build=_builds("hang"))
    with pytest.raises(ActorFailed, match=r"rollout worker r1 failed again .*rollout.timeout_s = 0.5 s"):
        call_with_replacement(lambda a: a.score.remote([1]), slot, "rollout worker r1", 0.5, "rollout.timeout_s")
    assert slot.restarts == 1  # replaced once, never retried forever


def test_a_call_already_sent_is_awaited_not_sent_again(ray_cluster):
    slot = ActorSlot(Scorer.remote(None), build=_builds())
    sent = slot.actor.score.remote([5])
    calls = []
    out = call_with_replacement(lambda a: calls.append(a) or a.score.remote([5]), slot, "w", 10.0, "k", sent=sent)
    assert out == [10] and calls == [] and slot.restarts == 0


@ray.remote(num_cpus=0)
class FakeEngine:
    """A rollout worker's `rollout` interface over real Ray calls: each episode takes the seconds its task says (or
    kills the process); the engine counts the episodes it holds at once."""

    def __init__(self):
        self.now = self.peak = self.episodes = 0

    async def rollout(self, jobs, greedy):
        import asyncio
        from types import SimpleNamespace

        from rl.contracts import Trajectory

        (job,) = jobs
        if job.task["seconds"] < 0:
            os._exit(1)
        self.now += 1
        self.peak, self.episodes = max(self.peak, self.now), self.episodes + 1
        await asyncio.sleep(job.task["seconds"])
        self.now -= 1
        # tau2's verdict as rl.evaluate reads it (its EvalResult would import tau2 into this actor: seconds)
        result = SimpleNamespace(reward=1.0, success=True, termination="agent_stop", failure=None, note=None)
        return [Trajectory(task_id=job.task["id"], group=job.group, messages=[], eval=result)]

    def counts(self):
        return self.peak, self.episodes


def test_model_agent_keeps_its_engines_busy_and_yields_episodes_as_they_end(ray_cluster):
    """rl.evaluate --model: `concurrency` episodes in flight over the engines, a finished one's place refilled at
    once (a long episode holds back no other), every (task, trial) once; a dead engine is one named error."""
    from rl.config import load_config
    from rl.model_agent import ModelAgent

    agent = ModelAgent(load_config(None, ["rollout.timeout_s=60"]), "unused")
    agent.workers = [FakeEngine.remote(), FakeEngine.remote()]
    # Both processes up first: under load one can start after the other has played all 30 short episodes.
    ray.get([w.counts.remote() for w in agent.workers])
    jobs = [({"id": "long", "seconds": 3.0}, 0)] + [({"id": f"t{i}", "seconds": 0.05}, i % 2) for i in range(30)]
    outcomes = list(agent.play(jobs, greedy=True, concurrency=4))
    assert sorted((o.task_id, o.trial) for o in outcomes) == sorted((t["id"], k) for t, k in jobs)
    assert outcomes[-1].task_id == "long"  # the 30 short ones went past it
    counts = ray.get([w.counts.remote() for w in agent.workers])
    assert sum(n for _, n in counts) == 31 and all(n > 5 for _, n in counts)  # both engines took a share
    assert sum(peak for peak, _ in counts) <= 4 and max(peak for peak, _ in counts) >= 2

    agent.workers = [FakeEngine.remote()]
    with pytest.raises(ActorFailed, match="rollout worker eval0 died"):
        list(agent.play([({"id": "x", "seconds": -1}, 0)], greedy=True, concurrency=2))
