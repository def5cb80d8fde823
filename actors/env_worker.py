"""EnvWorker: a Ray actor that holds many concurrent tau2-telecom sessions; EnvPool: a set of them.

Each worker parses the telecom domain once (TelecomWorld) and serves sessions by id. Every step returns,
besides the observation, the tau2 messages it added; the pool keeps that log per session on the driver,
so when a worker dies (OOM, node loss) Ray restarts it and the pool rebuilds the session from its task
and log - tau2 replays every recorded tool call and checks the outputs - and retries the call.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from envs.tau2_telecom.endpoint import LLMEndpoint
from envs.tau2_telecom.session import EvalResult, SessionLimits, TelecomSession
from envs.tau2_telecom.tool_calls import ToolCallLimits
from envs.tau2_telecom.users import LLMUser, ScriptedUser

if TYPE_CHECKING:
    from rl.config import Config


@dataclass(frozen=True)
class EnvSettings:
    """What a worker needs to build sessions; plain data so it travels to actors."""

    policy: str = "manual"
    limits: SessionLimits = SessionLimits()
    call_limits: ToolCallLimits = ToolCallLimits()
    user: str = "scripted"  # envs.tau2_telecom.choices.USERS
    user_llm: LLMEndpoint | None = None  # the LLM customer's endpoint when user == "llm"
    judge: LLMEndpoint | None = None  # tau2's NL-assertion judge inside evaluate(); None = not judged
    prompt: str = "full"  # full | compact | minimal (see TelecomSession)
    world: str = "cached"  # "tau2_per_episode" builds every env with tau2's constructor (benchmark baseline)

    @classmethod
    def from_config(cls, cfg: Config) -> EnvSettings:
        """From the run config: its env section and the user_llm / judge endpoints."""
        env = cfg.env
        return cls(policy=env.policy,
                   limits=SessionLimits(max_turns=env.max_turns, max_errors=env.max_errors),
                   call_limits=ToolCallLimits(max_calls_per_turn=env.max_calls_per_turn,
                                              max_argument_chars=env.max_argument_chars),
                   user=env.user, user_llm=cfg.user_llm if env.user == "llm" else None,
                   judge=cfg.judge if cfg.judge.model else None, prompt=env.prompt)

    def new_session(self, world) -> TelecomSession:
        """A session on `world` with this customer, judge, limits and prompt (a fresh customer every call)."""
        user = LLMUser(self.user_llm) if self.user == "llm" else ScriptedUser()
        return TelecomSession(world, self.limits, user=user, judge=self.judge, prompt=self.prompt)


class EnvWorkerImpl:
    """The actor's body, usable in-process too (tests, benchmarks)."""

    def __init__(self, settings: EnvSettings):
        from envs.tau2_telecom.world import get_world  # parse the domain inside the actor process

        self.settings = settings
        self.world = get_world(settings.policy, settings.call_limits, settings.world)
        self.sessions: dict[str, TelecomSession] = {}

    def _new_session(self) -> TelecomSession:
        return self.settings.new_session(self.world)

    def reset(self, sid: str, task: dict, mode: str) -> dict:
        from envs.tau2_telecom import tau2_api as t2

        session = self.sessions.get(sid) or self._new_session()
        self.sessions[sid] = session
        obs = session.reset(t2.Task.model_validate(task), mode)
        return {"obs": obs.to_dict(), "log_delta": _dump(session.trajectory), "counters": _counters(session)}

    def step(self, sid: str, turn: Any) -> dict:
        session = self._session(sid)
        n, n_rejected = len(session.trajectory), len(session.rejected)
        obs = session.step(turn)
        return {"obs": obs.to_dict(), "log_delta": _dump(session.trajectory[n:]),
                "rejected_delta": session.rejected[n_rejected:], "counters": _counters(session)}

    def evaluate(self, sid: str) -> EvalResult:
        return self._session(sid).evaluate()

    def restore(self, sid: str, log: dict) -> None:
        fresh = self._new_session()
        self.sessions[sid] = TelecomSession.restore(self.world, log, fresh.limits, user=fresh.user, judge=fresh.judge,
                                                    prompt=fresh.prompt)

    def run_batch(self, method: str, calls: list[tuple]) -> list[tuple[bool, Any]]:
        """Many calls in one Ray round trip; each item is (ok, result or exception), so one bad
        session does not fail the others."""
        out = []
        for args in calls:
            try:
                out.append((True, getattr(self, method)(*args)))
            except Exception as e:
                out.append((False, e))
        return out

    def close(self, sid: str) -> None:
        self.sessions.pop(sid, None)

    def num_sessions(self) -> int:
        return len(self.sessions)

    def _session(self, sid: str) -> TelecomSession:
        if sid not in self.sessions:
            raise SessionNotFound(f"no session {sid!r} on this worker (closed, or the worker restarted)")
        return self.sessions[sid]


class SessionNotFound(KeyError):
    """Raised by a worker that does not hold the session - after a restart the pool rebuilds it."""


def _dump(messages) -> list[dict]:
    return [m.model_dump(mode="json") for m in messages]


def _counters(s: TelecomSession) -> dict:
    return {"turns": s.turns, "tool_errors": s.tool_errors, "done": s.done,
            "termination": s.termination, "transferred": s.transferred}


EnvWorker = ray.remote(num_cpus=0)(EnvWorkerImpl)
"""Ray actor class. num_cpus=0: env steps are short and bursty; they should not hold a CPU slot that the
vLLM engines and learners need."""


# Ray re-raises a remote exception as a subclass of its original type, so SessionNotFound is caught too.
_RETRYABLE = (RayActorError, ActorDiedError, ActorUnavailableError, SessionNotFound)


@dataclass
class _SessionRecord:
    worker: int
    task: dict
    mode: str
    trajectory: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    counters: dict = field(default_factory=dict)

    def log(self) -> dict:
        return {"task": self.task, "mode": self.mode, "trajectory": self.trajectory,
                "rejected": self.rejected, "counters": self.counters}


class EnvPool:
    """Driver-side handle on N EnvWorker actors: routes sessions, keeps their logs, survives worker deaths."""

    def __init__(self, settings: EnvSettings, num_workers: int = 2, max_restarts: int = 3,
                 workers: list | None = None, prefix: str = "s"):
        """Start `num_workers` EnvWorker actors, or attach to existing `workers` (handles are shareable:
        each client keeps the logs of the sessions it started; `prefix` keeps their ids apart)."""
        self.settings = settings
        self.workers = workers if workers is not None else [
            EnvWorker.options(max_restarts=max_restarts, max_task_retries=0).remote(settings)
            for _ in range(num_workers)]
        self.records: dict[str, _SessionRecord] = {}
        self._ids = itertools.count()
        self._prefix = prefix
        self.recoveries = 0
        # Guards the bookkeeping only, never a Ray call: a rollout worker calls the pool from many threads
        # at once (one per episode in flight) and their round trips must overlap, not queue.
        self._lock = threading.Lock()

    # -- batch API: one Ray round trip per call for many sessions
    def reset_many(self, tasks: list[Any], mode: str) -> list[tuple[str, dict]]:
        """Start one session per task (tau2 Task or dict). Returns [(session_id, first observation)]."""
        sids = []
        for task in tasks:
            d = task if isinstance(task, dict) else task.model_dump(mode="json")
            with self._lock:
                sid = f"{self._prefix}{next(self._ids)}"
                worker = min(range(len(self.workers)), key=lambda w: self._load(w))
                self.records[sid] = _SessionRecord(worker=worker, task=d, mode=mode)
            sids.append(sid)
        outs = self._call_many("reset", [(sid, (sid, self.records[sid].task, mode)) for sid in sids])
        for sid, out in zip(sids, outs):
            self.records[sid].trajectory = out["log_delta"]
            self.records[sid].counters = out["counters"]
        return [(sid, out["obs"]) for sid, out in zip(sids, outs)]

    def step_many(self, turns: list[tuple[str, Any]]) -> list[dict]:
        outs = self._call_many("step", [(sid, (sid, turn)) for sid, turn in turns])
        for (sid, _), out in zip(turns, outs):
            rec = self.records[sid]
            rec.trajectory.extend(out["log_delta"])
            rec.rejected.extend(out["rejected_delta"])
            rec.counters = out["counters"]
        return [out["obs"] for out in outs]

    def evaluate_many(self, sids: list[str]) -> list[EvalResult]:
        return self._call_many("evaluate", [(sid, (sid,)) for sid in sids])

    def close_many(self, sids: list[str]) -> None:
        self._call_many("close", [(sid, (sid,)) for sid in sids])
        with self._lock:
            for sid in sids:
                self.records.pop(sid, None)

    # -- single-session conveniences
    def reset(self, task, mode: str) -> tuple[str, dict]:
        return self.reset_many([task], mode)[0]

    def step(self, sid: str, turn: Any) -> dict:
        return self.step_many([(sid, turn)])[0]

    def evaluate(self, sid: str) -> EvalResult:
        return self.evaluate_many([sid])[0]

    def log(self, sid: str) -> dict:
        return self.records[sid].log()

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.workers = []

    def _load(self, w: int) -> int:
        return sum(r.worker == w for r in self.records.values())

    def _call_many(self, method: str, calls: list[tuple[str, tuple]]) -> list[Any]:
        """`method(*args)` for each (session id, args), one batch per worker (one Ray round trip each)."""
        by_worker: dict[int, list[int]] = {}
        for i, (sid, _) in enumerate(calls):
            by_worker.setdefault(self.records[sid].worker, []).append(i)
        refs = {w: self.workers[w].run_batch.remote(method, [calls[i][1] for i in idx]) for w, idx in by_worker.items()}
        results: list[Any] = [None] * len(calls)
        for w, idx in by_worker.items():
            try:
                outcomes = ray.get(refs[w])
            except _RETRYABLE:  # the worker died: every call in its batch is recovered one by one
                outcomes = [(False, SessionNotFound("worker died"))] * len(idx)
            for i, (ok, value) in zip(idx, outcomes):
                if ok:
                    results[i] = value
                elif isinstance(value, _RETRYABLE) and calls[i][0] in self.records:
                    results[i] = self._recover_and_retry(calls[i][0], method, calls[i][1])
                else:
                    raise value
        return results

    def _recover_and_retry(self, sid: str, method: str, args: tuple) -> Any:
        """The worker died mid-call: wait for Ray to restart it, rebuild the session from its log, retry."""
        worker = self.workers[self.records[sid].worker]
        deadline = time.monotonic() + 120
        while True:
            try:
                if method != "reset":
                    ray.get(worker.restore.remote(sid, self.records[sid].log()))
                result = ray.get(getattr(worker, method).remote(*args))
                self.recoveries += 1
                return result
            except _RETRYABLE:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
