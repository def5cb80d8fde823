"""The driver's calls to its actors: each waits at most a timeout, and an actor that died or hung is replaced once.

    result = call_with_replacement(lambda actor: actor.score.remote(batch), holder, "reward actor",
                                   timeout_s=cfg.reward.timeout_s, key="reward.timeout_s")

A hung actor is as lost as a dead one (a stuck engine, a deadlocked judge call): the driver kills it, builds a new
one (`ActorSlot.replace`) and repeats the call there. A second failure stops the run with a message naming the actor
and the config key, instead of hanging the driver or retrying forever.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray


class ActorFailed(RuntimeError):
    """An actor died or did not answer in time, twice: the run cannot go on without it."""


@dataclass
class ActorSlot:
    """One actor the driver depends on, and how to build its replacement (started and ready to serve)."""

    actor: Any
    build: Callable[[], Any]
    restarts: int = 0

    def replace(self) -> None:
        ray.kill(self.actor, no_restart=True)
        self.actor = self.build()
        self.restarts += 1


def wait(ref, timeout_s: float | None, what: str, key: str):
    """ray.get with a timeout that names the actor and the key that sets it."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise ActorFailed(f"{what} did not answer within {key} = {timeout_s:g} s") from None


def call_with_replacement(call: Callable[[Any], Any], slot: ActorSlot, what: str, timeout_s: float | None,
                          key: str, sent=None):
    """`call(actor)` returns an ObjectRef; its result, from a replacement actor if the first died or hung.
    sent: the first call's ObjectRef when it was already made (calls to several actors run concurrently)."""
    try:
        return wait(call(slot.actor) if sent is None else sent, timeout_s, what, key)
    except (ray.exceptions.RayActorError, ActorFailed) as e:
        print(f"{what} failed ({_reason(e)}); replacing it and repeating the call", file=sys.stderr)
    slot.replace()
    try:
        return wait(call(slot.actor), timeout_s, what, key)
    except (ray.exceptions.RayActorError, ActorFailed) as e:
        raise ActorFailed(f"{what} failed again after its replacement ({_reason(e)}); stopping the run") from e


def _reason(e: Exception) -> str:
    return str(e) if isinstance(e, ActorFailed) else f"died: {type(e).__name__}"
