"""Sweep runners: how the runs of a sweep are executed - one after another as local `python -m rl.train`
subprocesses (SequentialRunner + LocalTrain), or as Ray jobs on a cluster (JobRunner) - each reporting every
run's Attempt as it ends.
"""
from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rl.config import redact_overrides, secrets_to_environment
from rl.tools.sweep.spec import REPO_ROOT, Run, SweepError

# Not uploaded with a Ray job's working_dir: environments, outputs, caches (Ray also honours .gitignore).
JOB_EXCLUDES = [".venv", ".git", "runs", "outputs", "checkpoints", "wandb", "bench_results", "*.egg-info",
                "__pycache__", ".pytest_cache", ".hypothesis", ".cache"]


@dataclass
class Attempt:
    returncode: int  # 0 = the run finished
    wall_s: float
    message: str = ""  # why it failed, when the log alone does not say (job status message, exception)


OnDone = Callable[[Run, Attempt], None]


class Runner(Protocol):
    """Runs the given runs (in any order, any concurrency) and calls on_done once per run as each one ends."""

    def run(self, runs: list[Run], on_done: OnDone) -> None: ...


class LocalTrain:
    """Runs one run as a subprocess `python -m rl.train ...` here (it starts and stops its own local Ray);
    stdout and stderr go to the run's log. Returns the exit status."""

    def __init__(self, module: str = "rl.train"):
        self.module = module

    def command(self, run: Run) -> list[str]:
        return [sys.executable, "-m", self.module, *run.train_args()]

    def __call__(self, run: Run) -> int:
        cmd = self.command(run)
        env = dict(os.environ, PYTHONUNBUFFERED="1",  # a crash keeps its last lines in the log
                   PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(run.log_path, "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(redact_overrides(cmd))}\n")
            log.flush()
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


class SequentialRunner:
    """One run after another through `execute(run) -> exit status` (LocalTrain by default; tests pass a fake).
    An exception in one run fails that run only."""

    def __init__(self, execute: Callable[[Run], int] | None = None):
        self.execute = execute or LocalTrain()

    def run(self, runs: list[Run], on_done: OnDone) -> None:
        for run in runs:
            t0 = time.monotonic()
            try:
                rc, message = self.execute(run), ""
            except Exception as e:  # noqa: BLE001 - one broken run must not stop the sweep
                rc, message = 1, f"{type(e).__name__}: {e}"
            on_done(run, Attempt(rc, time.monotonic() - t0, message))


class JobRunner:
    """Every run a Ray job on the cluster behind `address` (the dashboard, e.g. http://127.0.0.1:8265), at most
    max_concurrent at a time. The repo is the job's working_dir, so the cluster runs this checkout's code; run
    dirs are absolute paths, which the sweep reads back: the sweep dir must be on storage the cluster's head
    shares with this machine (the same machine, or e.g. /shared on the cluster)."""

    def __init__(self, address: str, max_concurrent: int = 1, poll_s: float = 5.0):
        from ray.job_submission import JobSubmissionClient

        self.client = JobSubmissionClient(address)  # fails now if the dashboard cannot be reached
        self.address, self.max_concurrent, self.poll_s = address, max_concurrent, poll_s

    def entrypoint(self, run: Run) -> str:
        """The job's command line; API keys travel as environment variables (job_env), never in it: Ray stores
        and shows entrypoints."""
        args, _ = secrets_to_environment(run.train_args())
        args[1] = repo_relative(run.base_config)  # the job's cwd is the uploaded copy of the repo
        return shlex.join(["python", "-m", "rl.train", *args])

    def submit(self, run: Run, entrypoint: str) -> str:
        sid = re.sub(r"[^A-Za-z0-9_-]", "_", f"sweep-{run.arm.name}-seed{run.seed}")[:80]
        _, job_env = secrets_to_environment(run.train_args())
        return self.client.submit_job(
            entrypoint=entrypoint, submission_id=f"{sid}-{secrets.token_hex(3)}",
            runtime_env={"working_dir": str(REPO_ROOT), "excludes": JOB_EXCLUDES, "env_vars": job_env},
            metadata={"telerl_sweep_run": run.label, "run_dir": str(run.run_dir)})

    def run(self, runs: list[Run], on_done: OnDone) -> None:
        from ray.job_submission import JobStatus

        pending, active = list(runs), {}  # job id -> (run, start time, entrypoint)
        poll_errors = 0
        try:
            while pending or active:
                while pending and len(active) < self.max_concurrent:
                    run, t0 = pending.pop(0), time.monotonic()
                    entrypoint = self.entrypoint(run)  # now: --resume depends on the run dir before the run
                    try:
                        active[self.submit(run, entrypoint)] = (run, t0, entrypoint)
                    except Exception as e:  # noqa: BLE001 - e.g. a runtime_env upload error: this run fails
                        self._log(run, "", entrypoint, f"submit failed: {e}\n")
                        on_done(run, Attempt(1, time.monotonic() - t0, f"job submission failed: {e}"))
                time.sleep(self.poll_s)
                for job_id, (run, t0, entrypoint) in list(active.items()):
                    try:
                        info = self.client.get_job_info(job_id)
                        poll_errors = 0
                    except Exception as e:  # a dashboard hiccup must not stop a sweep of hour-long jobs
                        poll_errors += 1
                        if poll_errors >= 20:
                            raise
                        print(f"warning: status of job {job_id}: {e}", file=sys.stderr)
                        continue
                    if info.status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
                        continue
                    del active[job_id]
                    self._log(run, job_id, entrypoint, self.client.get_job_logs(job_id))
                    ok = info.status == JobStatus.SUCCEEDED
                    rc = 0 if ok else (info.driver_exit_code or 1)
                    # Ray's message repeats the log's tail, which the results quote anyway: keep its first line.
                    why = (info.message or "").strip().splitlines()[:1]
                    on_done(run, Attempt(rc, time.monotonic() - t0,
                                         "" if ok else f"job {job_id} {info.status.value}: {''.join(why)}"))
        finally:  # Ctrl-C or an error here: do not leave jobs training on the cluster
            for job_id in active:
                try:
                    self.client.stop_job(job_id)
                    print(f"stopped job {job_id}", file=sys.stderr)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass

    def _log(self, run: Run, job_id: str, entrypoint: str, text: str) -> None:
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(run.log_path, "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} ray job {job_id} at {self.address}: "
                      f"{entrypoint}\n{text}")


def repo_relative(path: Path) -> str:
    rel = os.path.relpath(path.resolve(), REPO_ROOT)
    if rel.startswith(".."):
        raise SweepError(f"base_config {path} is outside the repository {REPO_ROOT}, so a Ray job (whose working "
                         f"dir is the repository) cannot read it")
    return rel
