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
