"""Where a run executes: the Ray cluster (local or remote), whether it has GPUs, the actors' runtime environment,
and the task sets a config names (training and held out). Shared by every entry point (rl.train, rl.sft, rl.rm.*,
bench) so that none of them imports the driver."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rl.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]


def actor_runtime_env(**env_vars: str) -> dict:
    """Ray runtime_env for actors started from this checkout: they import this repo's packages (rl, actors, envs),
    and vLLM's worker processes import the weight-sync extension, hence the PYTHONPATH. vLLM logs at WARNING unless
    VLLM_LOGGING_LEVEL says otherwise: its ~20 INFO lines per engine start would bury the run's own console lines.
    Ray's warning about a blocking ray.get inside an async actor is off: the rollout worker calls its env pool from
    worker threads (asyncio.to_thread) on purpose, so the warning, printed once per thread, is a false alarm."""
    return {"env_vars": {"PYTHONPATH": str(REPO_ROOT),
                         "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
                         "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0", **env_vars}}


def init_ray(cfg: Config | None = None, need_cpus: int = 0, **kwargs) -> None:
    """Connect to cfg.ray.address (a cluster; inside `ray job submit` RAY_ADDRESS says where) or start a local
    Ray with at least need_cpus logical CPUs (cfg.ray.num_cpus, else all cores). kwargs go to ray.init."""
    import ray

    if ray.is_initialized():
        return
    runtime_env = kwargs.pop("runtime_env", None) or actor_runtime_env()
    if cfg is not None and cfg.ray.address:
        ray.init(address=cfg.ray.address, runtime_env=runtime_env, **kwargs)
        return
    cpus = (cfg.ray.num_cpus if cfg is not None else None) or os.cpu_count() or 1
    kwargs.setdefault("include_dashboard", False)
    ray.init(num_cpus=max(cpus, need_cpus), runtime_env=runtime_env, **kwargs)


def cluster_has_gpus() -> bool:
    """Whether the actors get GPUs. A `ray job submit` driver runs on the CPU head node, so this is a property of
    the cluster, not of the driver's process."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def load_tasks(cfg: Config, split: str | None = None) -> dict[str, dict]:
    """{task id: tau2 task dict}: cfg.env.tasks_file (broken tasks are skipped with a warning naming them) or
    cfg.env.split, or `split` when given. Solo mode keeps only tasks with a ticket (its prompt is the ticket);
    env.max_faults keeps only tasks with at most that many faults."""
    from envs.tau2_telecom.tasks import load_split, load_task_file, task_faults

    if cfg.env.tasks_file and split is None:
        loaded = load_task_file(cfg.env.tasks_file)
        for problem in loaded.problems:
            print(f"warning: skipped {problem}", file=sys.stderr)
        tasks = loaded.tasks
    else:
        tasks = load_split(split or cfg.env.split)
    if cfg.env.mode == "solo":
        tasks = [t for t in tasks if t.ticket]
    if cfg.env.max_faults is not None:
        tasks = [t for t in tasks if len(task_faults(t.id)) <= cfg.env.max_faults]
    return {t.id: t.model_dump(mode="json") for t in tasks}


@dataclass(frozen=True)
class TaskSplit:
    """The tasks a run trains on, the held-out ones it reports and the validation ones it may choose settings by;
    no task is in two of them."""

    train: dict[str, dict]
    heldout: dict[str, dict]  # empty when train.eval_tasks = 0
    left_out: int  # training tasks dropped because they belong to train.eval_split
    validation: dict[str, dict] = field(default_factory=dict)  # train.validation_tasks of the training tasks


def split_tasks(cfg: Config) -> TaskSplit:
    """Training, held-out and validation tasks, the same for rl.train, rl.sft and rl.rft: with train.eval_tasks > 0
    the whole train.eval_split is kept out of training (demonstrations included), so no reported number comes from a
    task the policy learned from; train.validation_tasks more are set aside from the training tasks."""
    from rl.evaluation import hold_out, select_eval_tasks

    train = load_tasks(cfg)
    heldout, left_out, validation = {}, 0, {}
    if cfg.train.eval_tasks:
        where = f"train.eval_split={cfg.train.eval_split!r}"
        train, heldout, left_out = hold_out(train, load_tasks(cfg, cfg.train.eval_split), cfg.train.eval_tasks, where)
    if cfg.train.validation_tasks:
        if cfg.train.validation_tasks >= len(train):
            raise ValueError(f"train.validation_tasks={cfg.train.validation_tasks} leaves no training task (this "
                             f"config has {len(train)})")
        validation = {tid: train.pop(tid) for tid in select_eval_tasks(list(train), cfg.train.validation_tasks)}
    if cfg.train.task_ids:
        missing = [tid for tid in cfg.train.task_ids if tid not in train]
        if missing:
            raise ValueError(f"train.task_ids: {len(missing)} of {len(cfg.train.task_ids)} are not training tasks of "
                             f"this config (not in env.split / env.tasks_file, over env.max_faults, held out or set "
                             f"aside for validation), e.g. {missing[0]!r}")
        train = {tid: train[tid] for tid in cfg.train.task_ids}
    return TaskSplit(train, heldout, left_out, validation)
