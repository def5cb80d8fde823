"""Loading tau2 telecom tasks: the splits packaged with tau2, or an official task file from disk.

A broken task file never kills a run silently or half-way: every problem is reported with the file, the
task's index and id, and what is wrong; callers choose to stop (`strict=True`) or go on with the good tasks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pydantic import ValidationError

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.choices import SPLITS


class TaskFileError(ValueError):
    """A task file that cannot be used; the message names the file and, where known, line / task."""


@dataclass
class TaskLoad:
    tasks: list[t2.Task]
    problems: list[str] = field(default_factory=list)  # one line per task that could not be loaded


@lru_cache(maxsize=1)
def _packaged_tasks() -> dict[str, t2.Task]:
    # tau2 ships all 2285 telecom tasks in tasks.json; the splits are id lists in split_tasks.json.
    tasks = load_task_file(t2.TELECOM_DATA_DIR / "tasks.json", strict=True).tasks
    return {t.id: t for t in tasks}


@lru_cache(maxsize=1)
def _packaged_splits() -> dict[str, list[str]]:
    return json.loads((t2.TELECOM_DATA_DIR / "split_tasks.json").read_text())


def load_split(name: str) -> list[t2.Task]:
    """Tasks of one of tau2's telecom splits, in the split file's order (fresh copies)."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    by_id = _packaged_tasks()
    return [by_id[i].model_copy(deep=True) for i in _packaged_splits()[name]]


def split_ids(name: str) -> list[str]:
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    return list(_packaged_splits()[name])


def load_task_file(path: str | Path, strict: bool = False) -> TaskLoad:
    """Read a tau2 task file (a JSON list of tasks, or {"tasks": [...]}) and validate each task.

    strict=True raises TaskFileError on the first problem; otherwise bad tasks are listed in `problems`.
    Unreadable or unparseable files always raise: there is nothing to go on with.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskFileError(f"{path}: task file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TaskFileError(f"{path}: cannot read task file: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskFileError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if isinstance(data, dict) and "tasks" in data:
        data = data["tasks"]
    if not isinstance(data, list):
        raise TaskFileError(f"{path}: expected a JSON list of tasks (or an object with 'tasks'), "
                            f"got {type(data).__name__}")
    out = TaskLoad(tasks=[])
    seen: set[str] = set()
    for i, raw in enumerate(data):
        task_id = raw.get("id", "?") if isinstance(raw, dict) else "?"
        problem = None
        try:
            task = t2.Task.model_validate(raw)
            if task.id in seen:
                problem = "duplicate task id"
            seen.add(task.id)
        except ValidationError as e:
            lines = [f"{'.'.join(map(str, err['loc'])) or '<task>'}: {err['msg']}" for err in e.errors()[:5]]
            problem = "; ".join(lines)
        if problem is None:
            out.tasks.append(task)
            continue
        msg = f"{path}: task #{i} (id {task_id!r}): {problem}"
        if strict:
            raise TaskFileError(msg)
        out.problems.append(msg)
    return out


def task_family(task_id: str) -> str:
    """`[mms_issue]a|b[PERSONA:None]` -> mms_issue."""
    return task_id[1:task_id.index("]")] if task_id.startswith("[") and "]" in task_id else "?"


def task_faults(task_id: str) -> list[str]:
    """`[mms_issue]a|b[PERSONA:None]` -> [a, b]."""
    rest = task_id.split("]", 1)[1] if "]" in task_id else task_id
    return [f for f in rest.split("[", 1)[0].split("|") if f]
