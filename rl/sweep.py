"""Ablation sweeps: grid or random search over dotted config keys x seeds; every run is a `python -m rl.train`.

    python -m rl.sweep --config configs/sweeps/algorithms.yaml             # runs one after another, on this machine
    python -m rl.sweep --config configs/sweeps/algorithms.yaml --address http://127.0.0.1:8265 --max-concurrent 2
                                                                           # every run a Ray job on that cluster
    python -m rl.sweep --config configs/sweeps/algorithms.yaml --dry-run   # validate, print the runs, run nothing

An *arm* is one assignment of the swept params; a *run* is an arm with one seed. Every run's final config is
loaded and validated with rl.config.load_config before anything starts. Re-running a sweep skips finished runs
and retries failed ones (continuing from their last checkpoint). A failed run is reported, never fatal.

    <sweep_dir>/
      sweep.json             the expanded plan: arms, their params, every run's overrides
      <arm>/seed<k>/         the run's run_dir (rl/run_dir.py), plus done.json once the run finished
      <arm>/seed<k>.log      stdout + stderr of the run, every attempt appended
      results.csv            one row per run: status, params, the last step's metrics (+ the log tail if it failed)
      results.md             per arm: mean +- std over seeds of the sweep's `metrics`
      plots/<arm>.png        learning curves of that arm: every seed, and the mean with a +-std band
      plots/compare.png      all arms' mean curves, one panel per metric

The sweep file (configs/sweeps/*.yaml) is validated like a config: an unknown key, a wrong type or a bad value
fails with file:line.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import re
import secrets
import shlex
import statistics
import subprocess
import sys
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from rl.config import Config, ConfigError, _yaml_lines, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DONE_FILE = "done.json"  # written by the sweep into a run's run_dir once the run exited 0: "finished"
LOG_TAIL_LINES = 30
# Not uploaded with a Ray job's working_dir: environments, outputs, caches (Ray also honours .gitignore).
JOB_EXCLUDES = [".venv", ".git", "runs", "outputs", "checkpoints", "wandb", "bench_results", "*.egg-info",
                "__pycache__", ".pytest_cache", ".hypothesis", ".cache"]
_KEY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_RESERVED = ("seed", "run_dir")  # set per run by the sweep
_HELDOUT_RE = re.compile(r"held-out success \([^)]*\): before ([\d.]+) -> after ([\d.]+)")


class SweepError(ConfigError):
    """A sweep file could not be loaded or expanded; the message is meant for the user, verbatim."""


# ------------------------------------------------------------------------------------------------ the sweep file

@dataclass
class Param:
    key: str  # dotted config key
    values: list | None = None  # grid: the values; random: the choices (None when low/high are given)
    low: float | None = None
    high: float | None = None
    log: bool = False


@dataclass
class Sweep:
    path: Path  # the sweep file
    base_config: Path
    sweep_dir: Path
    mode: str  # grid | random
    seeds: list[int]
    params: list[Param]
    overrides: list[str]  # applied to every run
    metrics: list[str]  # summarised in results.md and plotted
    num_samples: int | None = None  # random only
    random_seed: int = 0  # random only: the same sweep file always expands to the same arms (resume needs that)
    lines: dict[tuple, int] = field(default_factory=dict)  # ("key",) / ("overrides", i) -> line in the sweep file

    @property
    def name(self) -> str:
        return self.sweep_dir.name

    def where(self, *key: Any) -> str:
        return _where(self.path, self.lines, key)


def _where(path: Path, lines: dict[tuple, int], key: tuple) -> str:
    """file:line of a key path, e.g. ("params", "reward.mixing") or ("overrides", 2); else of its top-level key."""
    line = lines.get(tuple(key)) or lines.get(tuple(key[:1]))
    return f"{path}:{line}" if line else str(path)


SWEEP_KEYS = {
    "base_config": "the config every run starts from (relative to the sweep file or the repo root)",
    "sweep_dir": "where runs and results go (relative to the current directory)",
    "mode": "grid | random",
    "num_samples": "random only: how many arms to draw",
    "random_seed": "random only: seeds the draw of arms (default 0)",
    "seeds": "config `seed` of each run of an arm (default [0])",
    "overrides": "key=value overrides applied to every run",
    "params": "dotted config key -> list of values (grid), or {choices: [...]} / {low, high, log} (random)",
    "metrics": "metrics.jsonl keys summarised in results.md and plotted (default [reward/mean, success_rate])",
}


def _item_lines(text: str) -> dict[tuple, int]:
    """Lines of the items of top-level sequences (overrides, seeds, metrics), which _yaml_lines does not record."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    out: dict[tuple, int] = {}
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            if isinstance(v, yaml.SequenceNode):
                for i, item in enumerate(v.value):
                    out[(str(k.value), i)] = item.start_mark.line + 1
    return out


def load_sweep(path: str | Path) -> Sweep:
    """Parse and type-check a sweep file; raises SweepError naming file:line. Arms are validated by plan()."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SweepError(f"sweep file not found: {path}") from None
    except OSError as e:
        raise SweepError(f"cannot read sweep file {path}: {e.strerror or e}") from None
    try:
        lines = _yaml_lines(text, str(path))  # syntax errors and duplicate keys, with their line
    except ConfigError as e:
        raise SweepError(str(e).replace("config key", "sweep key")) from None
    lines.update(_item_lines(text))
    try:  # OmegaConf's YAML loader, so values parse exactly as in configs and overrides (1e-3 is a float)
        data = OmegaConf.to_container(OmegaConf.create(text), resolve=False) if text.strip() else None
    except OmegaConfBaseException as e:
        raise SweepError(f"{path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with keys: {', '.join(SWEEP_KEYS)}")

    def where(*key: Any) -> str:
        return _where(path, lines, key)

    def bad(key: str, value: Any, expected: str, *at: Any) -> SweepError:
        return SweepError(f"{where(*(at or (key,)))}: sweep key '{key}': got {value!r}, expected {expected}")

    for key in data:
        if key not in SWEEP_KEYS:
            raise SweepError(f"{where(key)}: unknown sweep key '{key}'; expected one of: {', '.join(SWEEP_KEYS)}")
    for key in ("base_config", "sweep_dir"):
        if key not in data:
            raise SweepError(f"{path}: missing sweep key '{key}' ({SWEEP_KEYS[key]})")
        if not isinstance(data[key], str) or not data[key]:
            raise bad(key, data[key], "a path")

    mode = data.get("mode", "grid")
    if mode not in ("grid", "random"):
        raise bad("mode", mode, "one of: grid, random")
    num_samples = data.get("num_samples")
    if mode == "random":
        if type(num_samples) is not int or num_samples <= 0:
            raise bad("num_samples", num_samples, "an integer > 0 with mode 'random'", "num_samples" if
                      "num_samples" in data else "mode")
    elif num_samples is not None:
        raise bad("num_samples", num_samples, "no num_samples with mode 'grid' (every combination runs)")
    random_seed = data.get("random_seed", 0)
    if type(random_seed) is not int:
        raise bad("random_seed", random_seed, "an integer")

    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or any(type(s) is not int for s in seeds):
        raise bad("seeds", seeds, "a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise bad("seeds", seeds, "distinct seeds")

    overrides = data.get("overrides") or []
    if not isinstance(overrides, list):
        raise bad("overrides", overrides, "a list of key=value strings")
    for i, o in enumerate(overrides):
        key, sep, _ = str(o).partition("=")
        if not isinstance(o, str) or not sep or not _KEY_RE.match(key.strip()):
            raise bad("overrides", o, "key=value with a dotted config key, e.g. train.steps=20", "overrides", i)
        if key.strip() in _RESERVED:
            raise bad("overrides", o, f"no '{key.strip()}': the sweep sets it for every run (see seeds, sweep_dir)",
                      "overrides", i)

    metrics = data.get("metrics", ["reward/mean", "success_rate"])
    if not isinstance(metrics, list) or not metrics or any(not isinstance(m, str) or not m for m in metrics):
        raise bad("metrics", metrics, "a non-empty list of metric names, e.g. [reward/mean, success_rate]")

    raw_params = data.get("params") or {}
    if not isinstance(raw_params, dict):
        raise bad("params", raw_params, "a mapping of dotted config keys to values")
    params = [_parse_param(str(k), v, mode, where("params", str(k))) for k, v in raw_params.items()]

    base = _find_base(path, data["base_config"], where("base_config"))
    return Sweep(path=path, base_config=base, sweep_dir=Path(data["sweep_dir"]), mode=mode, seeds=seeds,
                 params=params, overrides=list(overrides), metrics=metrics, num_samples=num_samples,
                 random_seed=random_seed, lines=lines)


def _parse_param(key: str, spec: Any, mode: str, where: str) -> Param:
    def bad(expected: str) -> SweepError:
        return SweepError(f"{where}: param '{key}': got {spec!r}, expected {expected}")

    if not _KEY_RE.match(key):
        raise SweepError(f"{where}: param '{key}' is not a dotted config key, e.g. reward.rm_weight")
    if key in _RESERVED:
        raise SweepError(f"{where}: param '{key}': the sweep sets it for every run (use `seeds` for seeds)")
    if isinstance(spec, dict) and set(spec) == {"choices"}:
        spec_values = spec["choices"]
    elif isinstance(spec, dict):
        if mode != "random":
            raise bad("a list of values (low/high ranges are for mode 'random')")
        unknown = set(spec) - {"low", "high", "log"}
        if unknown or not {"low", "high"} <= set(spec):
            raise bad("{choices: [...]} or {low: number, high: number, log: true|false}")
        low, high, log = spec["low"], spec["high"], spec.get("log", False)
        if any(type(v) not in (int, float) for v in (low, high)) or type(log) is not bool:
            raise bad("numbers low and high, and log true or false")
        if not low < high:
            raise bad("low < high")
        if log and low <= 0:
            raise bad("low > 0 with log: true")
        return Param(key, low=float(low), high=float(high), log=log)
    else:
        spec_values = spec
    if not isinstance(spec_values, list) or not spec_values:
        raise bad("a non-empty list of values" + (" or {choices: [...]} or {low, high, log}" if mode == "random"
                                                  else ""))
    for v in spec_values:
        if isinstance(v, (dict, list)):
            raise bad("scalar values (string, number, true/false, null)")
    if len({json.dumps(v) for v in spec_values}) != len(spec_values):
        raise bad("distinct values")
    return Param(key, values=list(spec_values))


def _find_base(sweep_file: Path, base: str, where: str) -> Path:
    candidates = [Path(base)] if Path(base).is_absolute() else [sweep_file.parent / base, REPO_ROOT / base]
    for c in candidates:
        if c.is_file():
            return c
    raise SweepError(f"{where}: base_config {base!r} not found (looked at: {', '.join(map(str, candidates))})")


# ------------------------------------------------------------------------------------------------- expansion

@dataclass
class Arm:
    name: str  # readable and path-safe, e.g. "mixing=gated,rm_weight=0.5"
    values: dict[str, Any]  # dotted key -> value


@dataclass
class Run:
    """One arm x seed: what rl.train gets, where it writes."""

    arm: Arm
    seed: int
    overrides: list[str]  # every key=value rl.train gets, run_dir and seed included
    run_dir: Path
    log_path: Path
    base_config: Path
    config: Config  # the validated final config

    @property
    def label(self) -> str:
        return f"{self.arm.name} seed{self.seed}"

    def train_args(self) -> list[str]:
        """Arguments after `python -m rl.train`; --resume continues an interrupted or failed earlier attempt."""
        resume = self.run_dir.is_dir() and any(p.name != DONE_FILE for p in self.run_dir.iterdir())
        return ["--config", str(self.base_config), *self.overrides] + (["--resume"] if resume else [])


def _field_type(key: str) -> Any:
    """Schema type of a dotted config key (Optional stripped); None if there is no such key."""
    tp: Any = Config
    for part in key.split("."):
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            return None
        tp = hints[part]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp


def expand(sweep: Sweep) -> list[Arm]:
    """Grid: every combination, in file order. Random: num_samples distinct draws, the same ones every time."""
    keys = [p.key for p in sweep.params]
    if sweep.mode == "grid":
        assignments = [dict(zip(keys, combo)) for combo in itertools.product(*(p.values for p in sweep.params))]
    else:
        rng = random.Random(sweep.random_seed)
        if all(p.values is not None for p in sweep.params):
            total = math.prod(len(p.values) for p in sweep.params)
            if sweep.num_samples > total:
                raise SweepError(f"{sweep.where('num_samples')}: sweep key 'num_samples': got {sweep.num_samples}, "
                                 f"expected at most {total} (the distinct combinations of the choices; or mode: grid)")
        assignments, seen = [], set()
        for _ in range(1000 * sweep.num_samples):
            a = {p.key: _draw(p, rng) for p in sweep.params}
            if json.dumps(a, sort_keys=True) not in seen:
                seen.add(json.dumps(a, sort_keys=True))
                assignments.append(a)
            if len(assignments) == sweep.num_samples:
                break
    return _name_arms(assignments, keys)


def _draw(p: Param, rng: random.Random) -> Any:
    if p.values is not None:
        return rng.choice(p.values)
    v = math.exp(rng.uniform(math.log(p.low), math.log(p.high))) if p.log else rng.uniform(p.low, p.high)
    if _field_type(p.key) is int:  # e.g. algorithm.group_size: {low: 2, high: 8}
        return round(v)
    return float(f"{v:.6g}")  # readable overrides; 6 digits are plenty for a search


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _safe(name: str) -> str:
    """A directory name: readable, no path separators, bounded length."""
    name = re.sub(r"[^A-Za-z0-9._,=+-]", "_", name).lstrip(".") or "_"
    if len(name) > 120:  # filesystems cap names at 255 bytes; keep it readable and unique
        name = name[:110] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def _name_arms(assignments: list[dict], keys: list[str]) -> list[Arm]:
    # Short names (the last part of the key) unless two params share it: mixing=gated,rm_weight=0.5.
    # "name" says little on its own: algorithm.name -> algorithm=grpo.
    last = [k.split(".")[-2] if k.endswith(".name") else k.rsplit(".", 1)[-1] for k in keys]
    short = {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}
    arms, used = [], set()
    for a in assignments:
        name = _safe(",".join(f"{short[k]}={_fmt(v)}" for k, v in a.items()) or "base")
        unique, n = name, 2
        while unique in used:  # random draws that round to the same name
            unique, n = f"{name}-{n}", n + 1
        used.add(unique)
        arms.append(Arm(unique, a))
    return arms


def render(value: Any) -> str:
    """A value as the right-hand side of a key=value override, parsed back by rl.config to the same value."""
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        text = str(value)
        if _parse_override_value(text) != (str, text):
            text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def _parse_override_value(text: str) -> tuple[type, Any]:
    try:
        v = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]), resolve=False)["v"]
    except Exception:  # noqa: BLE001 - anything unparseable is simply "not the same value"
        return (type(None), object())
    return (type(v), v)


def plan(sweep: Sweep, extra_overrides: list[str] | None = None, check_paths: bool = True) -> list[Run]:
    """Every run with its validated config, before anything runs; raises SweepError naming the param and line.
    extra_overrides go after the params (the job mode's ray.address=auto)."""
    arms = expand(sweep)
    source: dict[str, str] = {}  # override -> where in the sweep file it comes from
    for i, o in enumerate(sweep.overrides):
        source[o] = f"{sweep.where('overrides', i)}: override '{o}'"
    runs = []
    for arm in arms:
        param_overrides = []
        for p in sweep.params:
            value = arm.values[p.key]
            text = render(value)
            if _parse_override_value(text) != (type(value), value):
                raise SweepError(f"{sweep.where('params', p.key)}: param '{p.key}': value {value!r} cannot be "
                                 f"passed as an override (got {text!r})")
            o = f"{p.key}={text}"
            source[o] = f"{sweep.where('params', p.key)}: param '{p.key}' = {value!r} (arm '{arm.name}')"
            param_overrides.append(o)
        for seed in sweep.seeds:
            run_dir = sweep.sweep_dir / arm.name / f"seed{seed}"
            overrides = [*sweep.overrides, *param_overrides, *(extra_overrides or []), f"seed={seed}",
                         f"run_dir={run_dir}"]
            try:
                cfg = load_config(str(sweep.base_config), overrides)
            except ConfigError as e:
                raise SweepError(_explain(str(e), overrides, source, sweep, arm, seed)) from None
            runs.append(Run(arm, seed, overrides, run_dir, sweep.sweep_dir / arm.name / f"seed{seed}.log",
                            sweep.base_config, cfg))
    if check_paths:
        _check_paths(runs)
    for run in runs:
        _check_unchanged(run)
    return runs


def _explain(msg: str, overrides: list[str], source: dict[str, str], sweep: Sweep, arm: Arm, seed: int) -> str:
    """Point a load_config error at the sweep file line of the override that caused it."""
    msg = msg.replace("command-line override", "override")
    for o in overrides:
        prefix = f"override '{o}': "
        if msg.startswith(prefix) and o in source:
            return f"{source[o]}: {msg[len(prefix):]}"
        if f"override '{o}'" in msg and o in source:
            return f"{source[o]}: {msg}"
    # Set in the base config (file:line is in the message) or by the sweep itself (seed / run_dir).
    return f"{sweep.where('base_config')}: arm '{arm.name}' seed {seed}: {msg}"


def _check_paths(runs: list[Run]) -> None:
    # Every run would load the reward model at start and fail the same way: say so once, before any runs.
    for run in runs:
        rm = run.config.reward.rm_path
        if rm and not Path(rm).is_dir():
            raise SweepError(f"arm '{run.arm.name}': reward.rm_path {rm!r} is not a folder; train the reward model "
                             f"first (python -m rl.rm_train ...) or point reward.rm_path at one")


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _comparable(cfg: Config) -> dict[str, Any]:
    # ray.* says where a run ran, not what it computed; api keys are redacted in the snapshot.
    return {k: v for k, v in _flat(cfg).items() if not k.startswith("ray.") and not k.endswith("api_key")
            and k != "run_dir"}


def _check_unchanged(run: Run) -> None:
    """A run dir from an earlier sweep with another config (edited sweep file or base config) must not be skipped
    as finished, nor continued with the new config: say which keys differ."""
    snapshot = run.run_dir / "config.yaml"
    if not snapshot.is_file():
        return
    try:
        old = _comparable(load_config(str(snapshot)))
    except ConfigError as e:
        print(f"warning: cannot compare {snapshot} with the sweep's config: {e}", file=sys.stderr)
        return
    new = _comparable(run.config)
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        raise SweepError(f"{run.run_dir} holds a run of '{run.label}' with another config ({'; '.join(diff[:5])}"
                         f"{'; ...' if len(diff) > 5 else ''}); use another sweep_dir, or delete {run.run_dir} to run "
                         f"it again")


def finished(run: Run) -> bool:
    return (run.run_dir / DONE_FILE).is_file()


# ---------------------------------------------------------------------------------------------------- runners

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
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
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
        args = run.train_args()
        args[1] = _repo_relative(run.base_config)  # the job's cwd is the uploaded copy of the repo
        return shlex.join(["python", "-m", "rl.train", *args])

    def submit(self, run: Run, entrypoint: str) -> str:
        sid = re.sub(r"[^A-Za-z0-9_-]", "_", f"sweep-{run.arm.name}-seed{run.seed}")[:80]
        return self.client.submit_job(
            entrypoint=entrypoint, submission_id=f"{sid}-{secrets.token_hex(3)}",
            runtime_env={"working_dir": str(REPO_ROOT), "excludes": JOB_EXCLUDES},
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


def _repo_relative(path: Path) -> str:
    rel = os.path.relpath(path.resolve(), REPO_ROOT)
    if rel.startswith(".."):
        raise SweepError(f"base_config {path} is outside the repository {REPO_ROOT}, so a Ray job (whose working "
                         f"dir is the repository) cannot read it")
    return rel


# ------------------------------------------------------------------------------------------------ results

@dataclass
class RunResult:
    run: Run
    status: str  # finished | failed | not run
    skipped: bool  # finished in an earlier invocation
    wall_s: float | None
    curve: list[dict]  # metrics.jsonl rows, one per step (the last write of a step wins: resumes re-log steps)
    final: dict  # the last step's metrics (+ held-out success parsed from the log, if the run evaluated)
    error: str = ""  # failed: the message and the tail of the log


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            by_step[int(row["step"])] = row
        except (ValueError, KeyError, TypeError):  # a run killed mid-write leaves a torn last line
            continue
    return [by_step[s] for s in sorted(by_step)]


def _log_tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    if not path.is_file():
        return "(no log)"
    lines = path.read_text(errors="replace").splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("=== ")), default=0)  # the last attempt
    return "\n".join(lines[start:][-n:])


def _heldout(log: Path) -> dict:
    """rl.train prints held-out success before/after training (train.eval_tasks > 0) rather than logging it."""
    if not log.is_file():
        return {}
    found = _HELDOUT_RE.findall(log.read_text(errors="replace"))
    return {"heldout/success_before": float(found[-1][0]), "heldout/success_after": float(found[-1][1])} if found \
        else {}


def collect(runs: list[Run], attempts: dict[int, Attempt]) -> list[RunResult]:
    """attempts: id(run) -> this invocation's attempt; runs not attempted were finished before (or not run)."""
    out = []
    for run in runs:
        attempt = attempts.get(id(run))
        curve = read_metrics(run.run_dir)
        final = {k: v for k, v in (curve[-1] if curve else {}).items() if isinstance(v, (int, float))}
        final.update(_heldout(run.log_path))
        if finished(run):
            done = json.loads((run.run_dir / DONE_FILE).read_text())
            out.append(RunResult(run, "finished", attempt is None, done.get("wall_s"), curve, final))
        elif attempt is None:
            out.append(RunResult(run, "not run", False, None, curve, final))
        else:
            error = (f"{attempt.message}\n" if attempt.message else "") + f"exit status {attempt.returncode}; " \
                f"log {run.log_path}:\n{_log_tail(run.log_path)}"
            out.append(RunResult(run, "failed", False, attempt.wall_s, curve, final, error))
    return out


def _num(x: float) -> str:
    return f"{x:.4g}"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return _num(values[0])
    return f"{_num(statistics.mean(values))} ± {_num(statistics.stdev(values))}"


def write_results(sweep: Sweep, results: list[RunResult]) -> dict[str, Path]:
    """results.csv, results.md and the plots in the sweep dir; returns their paths."""
    out = sweep.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    keys = [p.key for p in sweep.params]
    chosen = list(sweep.metrics)
    others = sorted({k for r in results for k in r.final} - set(chosen) - {"step"})

    csv_path = out / "results.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arm", "seed", "status", "skipped", "steps", *keys, *chosen, *others, "wall_s", "run_dir",
                    "log", "error"])
        for r in results:
            w.writerow([r.run.arm.name, r.run.seed, r.status, r.skipped, r.final.get("step", ""),
                        *(r.run.arm.values[k] for k in keys), *(r.final.get(m, "") for m in chosen + others),
                        "" if r.wall_s is None else f"{r.wall_s:.1f}", os.path.relpath(r.run.run_dir, out),
                        os.path.relpath(r.run.log_path, out), r.error])

    plots = _plot(sweep, results)

    arms = list(dict.fromkeys(r.run.arm.name for r in results))
    by_arm = {a: [r for r in results if r.run.arm.name == a] for a in arms}
    n_ok = sum(r.status == "finished" for r in results)
    md = [f"# Sweep `{sweep.name}`", "",
          f"`{sweep.path}`: base config `{sweep.base_config}`, mode {sweep.mode}, seeds {sweep.seeds}; "
          f"{len(arms)} arms, {len(results)} runs: {n_ok} finished, {len(results) - n_ok} not finished.", ""]
    if sweep.overrides:
        md += ["Every run: " + ", ".join(f"`{o}`" for o in sweep.overrides), ""]
    md += ["Final values (each run's last logged step), mean ± std (sample std) over the arm's finished seeds; "
           "one finished seed shows its value alone.", "",
           "| arm | " + " | ".join(keys + ["seeds"] + chosen) + " |",
           "|" + "---|" * (len(keys) + len(chosen) + 2)]
    missing = [m for m in chosen if not any(m in r.final for r in results if r.status == "finished")]
    for a in arms:
        done = [r for r in by_arm[a] if r.status == "finished"]
        cells = [_fmt(by_arm[a][0].run.arm.values[k]) for k in keys] + [f"{len(done)}/{len(by_arm[a])}"]
        cells += [_mean_std([r.final[m] for r in done if m in r.final]) for m in chosen]
        md.append(f"| {a} | " + " | ".join(cells) + " |")
    if missing:
        md += ["", f"Not logged by any finished run: {', '.join(missing)}."]
    if plots:
        md += ["", "## Learning curves", "", "![compare](plots/compare.png)", "",
               "Per arm: " + ", ".join(f"[{a}](plots/{p.name})" for a, p in plots.items() if a is not None)]
    failed = [r for r in results if r.status != "finished"]
    if failed:
        md += ["", "## Not finished", ""]
        for r in failed:
            md += [f"### {r.run.label}: {r.status}", "", "```", r.error or "(not attempted)", "```", ""]
    md_path = out / "results.md"
    md_path.write_text("\n".join(md) + "\n")
    return {"csv": csv_path, "md": md_path, **{f"plot:{a or 'compare'}": p for a, p in plots.items()}}


def _mean_curve(curves: list[list[dict]], metric: str) -> tuple[list[int], list[float], list[float]]:
    """Mean and std over seeds at every step some seed logged the metric."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for row in curve:
            if isinstance(row.get(metric), (int, float)):
                by_step.setdefault(int(row["step"]), []).append(float(row[metric]))
    steps = sorted(by_step)
    return (steps, [statistics.mean(by_step[s]) for s in steps],
            [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps])


def _plot(sweep: Sweep, results: list[RunResult]) -> dict[str | None, Path]:
    """plots/<arm>.png per arm and plots/compare.png (key None); curves of finished and failed runs alike."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    arms = list(dict.fromkeys(r.run.arm.name for r in results if r.curve))
    if not arms:
        return {}
    metrics = sweep.metrics
    plot_dir = sweep.sweep_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    out: dict[str | None, Path] = {}

    def panels(title: str):
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
        fig.suptitle(title, fontsize=10)
        for ax, m in zip(axes[0], metrics):
            ax.set_title(m, fontsize=9)
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        return fig, axes[0]

    def band(ax, curves, m, label, color):
        steps, mean, std = _mean_curve(curves, m)
        if steps:
            ax.plot(steps, mean, marker="o", ms=3, color=color, label=label)
            ax.fill_between(steps, [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)],
                            color=color, alpha=0.2)

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for a in arms:
        runs = [r for r in results if r.run.arm.name == a and r.curve]
        fig, axes = panels(f"{sweep.name}: {a}")
        for ax, m in zip(axes, metrics):
            for r in runs:
                steps = [row["step"] for row in r.curve if m in row]
                ax.plot(steps, [row[m] for row in r.curve if m in row], lw=0.8, alpha=0.5, color="gray",
                        label=f"seed {r.run.seed}" + ("" if r.status == "finished" else f" ({r.status})"))
            band(ax, [r.curve for r in runs], m, f"mean ± std ({len(runs)} seeds)", colors[0])
        for ax in axes:  # one legend, on the first panel with curves
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
                break
        fig.tight_layout()
        out[a] = plot_dir / f"{a}.png"
        fig.savefig(out[a], dpi=80)
        plt.close(fig)

    fig, axes = panels(f"{sweep.name}: mean ± std over seeds")
    for i, a in enumerate(arms):
        curves = [r.curve for r in results if r.run.arm.name == a and r.curve]
        for ax, m in zip(axes, metrics):
            band(ax, curves, m, a, colors[i % len(colors)])
    for ax in axes:  # one legend, on the first panel with curves (a metric may be in no metrics.jsonl)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
            break
    fig.tight_layout()
    out[None] = plot_dir / "compare.png"
    fig.savefig(out[None], dpi=80)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------------- driver

def run_sweep(sweep: Sweep, runner: Runner, runs: list[Run] | None = None) -> list[RunResult]:
    """Run what is not finished yet, then aggregate every run of the sweep (finished earlier ones included)."""
    runs = plan(sweep) if runs is None else runs
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep.sweep_dir / "sweep.json").write_text(json.dumps(
        {"sweep_file": str(sweep.path), "base_config": str(sweep.base_config), "mode": sweep.mode,
         "arms": [{"name": a, "params": v} for a, v in {r.arm.name: r.arm.values for r in runs}.items()],
         "runs": [{"arm": r.arm.name, "seed": r.seed, "run_dir": str(r.run_dir), "overrides": r.overrides}
                  for r in runs]}, indent=1) + "\n")
    # Seed-major: every arm's first seed before any arm's second, so an interrupted sweep already compares arms.
    todo = sorted((r for r in runs if not finished(r)), key=lambda r: sweep.seeds.index(r.seed))
    attempts: dict[int, Attempt] = {}
    if len(todo) < len(runs):
        print(f"skipping {len(runs) - len(todo)} finished run(s) (their run dirs hold {DONE_FILE})", file=sys.stderr)
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc=f"sweep {sweep.name}", unit="run",
               file=sys.stderr, dynamic_ncols=True)

    def on_done(run: Run, attempt: Attempt) -> None:
        attempts[id(run)] = attempt
        if attempt.returncode == 0:
            (run.run_dir / DONE_FILE).parent.mkdir(parents=True, exist_ok=True)
            (run.run_dir / DONE_FILE).write_text(json.dumps(
                {"arm": run.arm.name, "seed": run.seed, "params": run.arm.values, "overrides": run.overrides,
                 "wall_s": round(attempt.wall_s, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
            tqdm.write(f"{run.label}: finished in {attempt.wall_s:.0f} s", file=sys.stderr)
        else:
            tqdm.write(f"{run.label}: FAILED (exit {attempt.returncode}) after {attempt.wall_s:.0f} s; "
                       f"log: {run.log_path}", file=sys.stderr)
        bar.update(1)
        bar.set_postfix_str(run.label, refresh=True)

    try:
        runner.run(todo, on_done)
    finally:
        bar.close()
        results = collect(runs, attempts)
        write_results(sweep, results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, metavar="SWEEP_YAML", help="sweep file (see configs/sweeps/)")
    parser.add_argument("--address", default=None, metavar="URL",
                        help="Ray dashboard address, e.g. http://127.0.0.1:8265: every run becomes a Ray job there "
                             "(default: runs one after another on this machine)")
    parser.add_argument("--max-concurrent", type=int, default=1, metavar="N",
                        help="with --address: jobs running at the same time (default 1)")
    parser.add_argument("--poll-s", type=float, default=5.0, help="with --address: seconds between status polls")
    parser.add_argument("--dry-run", action="store_true", help="validate and print every run; run nothing")
    args = parser.parse_args(argv)
    if args.max_concurrent < 1:
        parser.error("--max-concurrent must be >= 1")
    try:
        sweep = load_sweep(args.config)
        if args.address:
            # The job's driver joins the cluster it runs on instead of starting a Ray of its own.
            sets_address = any(o.split("=", 1)[0].strip() == "ray.address" for o in sweep.overrides) or \
                any(p.key == "ray.address" for p in sweep.params)
            sweep.sweep_dir = sweep.sweep_dir.resolve()  # the job's cwd is elsewhere
            runs = plan(sweep, [] if sets_address else ["ray.address=auto"], check_paths=False)
            _repo_relative(sweep.base_config)
        else:
            runs = plan(sweep)
    except ConfigError as e:
        print(f"{parser.prog}: sweep error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in runs:
            state = "finished" if finished(run) else "to run"
            print(f"{run.label} [{state}]: python -m rl.train {shlex.join(run.train_args())}")
        print(f"{len(runs)} runs ({len({r.arm.name for r in runs})} arms x {len(sweep.seeds)} seeds)")
        return 0
    runner: Runner = (JobRunner(args.address, args.max_concurrent, args.poll_s) if args.address
                      else SequentialRunner())
    results = run_sweep(sweep, runner, runs)
    n = {s: sum(r.status == s for r in results) for s in ("finished", "failed", "not run")}
    skipped = sum(r.skipped for r in results)
    print(f"sweep {sweep.name}: {n['finished']} finished ({skipped} skipped as already done), {n['failed']} failed"
          + (f", {n['not run']} not run" if n["not run"] else ""))
    print(f"results: {sweep.sweep_dir / 'results.md'}\n         {sweep.sweep_dir / 'results.csv'}\n"
          f"         {sweep.sweep_dir / 'plots'}/")
    return 0 if n["finished"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
