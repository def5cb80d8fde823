"""The pair format: a `Pair` record (prompt / chosen / rejected in OpenRLHF's JSONL layout, plus subset, section,
group, task id, source and an optional margin), its validation, reading and writing pair files (a bad line is
reported as file:line plus the field: `PairFileError`), and splitting pairs by held-out task.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

ROLES = ("system", "user", "assistant", "tool")
SOURCES = ("oracle_perturbation", "rollout", "teleqna")
TAU2_SECTION = "tau2-telecom"


@dataclass
class Pair:
    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    subset: str
    section: str
    group: str  # shared by the pairs with the same prompt + chosen (best-of-n groups)
    task_id: str | None = None
    source: str = ""
    margin: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["margin"] is None:
            del d["margin"]  # optional key (OpenRLHF's margin); absent rather than null
        return d


class PairFileError(ValueError):
    """A pair file (or one line of it) that cannot be used; the message names file:line and the field."""


def as_messages(value, field_name: str, default_role: str) -> list[dict]:
    """Chat messages, or a string taken as one message of `default_role` (OpenRLHF's plain-text form)."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}] if value else []
    if not isinstance(value, list):
        raise ValueError(f"field {field_name!r}: expected a list of chat messages or a string, "
                         f"got {type(value).__name__}")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise ValueError(f"field {field_name!r}[{i}]: expected a message object, got {type(m).__name__}")
        if m.get("role") not in ROLES:
            raise ValueError(f"field {field_name!r}[{i}].role: {m.get('role')!r} is not one of {ROLES}")
        content = m.get("content")
        # OpenAI assistant messages that only call tools may carry content null.
        if not (isinstance(content, str) or (content is None and m.get("tool_calls"))):
            raise ValueError(f"field {field_name!r}[{i}].content: expected a string, got {type(content).__name__}")
    return value


def _group_hash(prompt: list[dict], chosen: list[dict]) -> str:
    blob = json.dumps([prompt, chosen], sort_keys=True, ensure_ascii=False)
    return "h:" + hashlib.sha1(blob.encode()).hexdigest()[:16]


def pair_from_dict(d) -> Pair:
    """Validate one pair object. Raises ValueError naming the bad field.

    Only prompt/chosen/rejected are required (plain OpenRLHF data has nothing else): subset and section default
    to "default", group to a hash of prompt + chosen (which is what a group means)."""
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    for key in ("prompt", "chosen", "rejected"):
        if key not in d:
            raise ValueError(f"missing field {key!r}")
    prompt = as_messages(d["prompt"], "prompt", "user")
    chosen = as_messages(d["chosen"], "chosen", "assistant")
    rejected = as_messages(d["rejected"], "rejected", "assistant")
    for key, side in (("chosen", chosen), ("rejected", rejected)):
        if not side:
            raise ValueError(f"field {key!r}: empty")
    if chosen == rejected:
        raise ValueError("fields 'chosen' and 'rejected' are identical")
    strings = {}
    for key, default in (("subset", "default"), ("section", "default"), ("group", None), ("source", "")):
        v = d.get(key, default)
        if v is not None and not (isinstance(v, str) and (v or key == "source")):
            raise ValueError(f"field {key!r}: expected a non-empty string, got {v!r}")
        strings[key] = v
    task_id = d.get("task_id")
    if task_id is not None and not isinstance(task_id, str):
        raise ValueError(f"field 'task_id': expected a string or null, got {type(task_id).__name__}")
    margin = d.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not math.isfinite(margin)):  # json.loads reads NaN and Infinity
        raise ValueError(f"field 'margin': expected a finite number or null, got {margin!r}")
    return Pair(prompt, chosen, rejected, strings["subset"], strings["section"],
                strings["group"] or _group_hash(prompt, chosen), task_id, strings["source"],
                None if margin is None else float(margin))


def read_pairs(path: str | Path) -> list[Pair]:
    """Read a pair JSONL file. Any bad line raises PairFileError naming file:line and the field."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PairFileError(f"{path}: pair file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PairFileError(f"{path}: cannot read pair file: {e}") from None
    pairs = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PairFileError(f"{path}:{lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        try:
            pairs.append(pair_from_dict(obj))
        except ValueError as e:
            raise PairFileError(f"{path}:{lineno}: {e}") from None
    return pairs


def write_pairs(path: str | Path, pairs: Iterable[Pair]) -> None:
    """Write pairs as JSONL atomically (temp file + rename): a reader never sees half a file. Every pair is
    validated first, so nothing is written that read_pairs would refuse."""
    path = Path(path)
    lines = []
    for i, p in enumerate(pairs):
        d = p.to_dict()
        try:
            pair_from_dict(d)
        except ValueError as e:
            raise ValueError(f"pair #{i} (group {p.group!r}): {e}") from None
        lines.append(json.dumps(d, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder, so the rename is atomic
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def split_by_task(pairs: Iterable[Pair], held_out_task_ids: Iterable[str]) -> tuple[list[Pair], list[Pair]]:
    """(pairs whose task is not held out, pairs whose task is held out). E.g. held_out = split_ids("test"):
    an RM trained on the first list is evaluated on tasks it never saw."""
    held = set(held_out_task_ids)
    keep, out = [], []
    for p in pairs:
        (out if p.task_id in held else keep).append(p)
    return keep, out
