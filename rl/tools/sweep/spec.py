"""The sweep spec: the sweep file's schema, loading and validation (errors name file:line), its expansion into
arms (grid or seeded random draws) and runs (arm x seed, each with its validated rl.train config), and what
marks a run finished.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import random
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rl.config import Config, ConfigError, _yaml_lines, load_config
from rl.models import is_local_path

REPO_ROOT = Path(__file__).resolve().parents[3]
DONE_FILE = "done.json"  # written by the sweep into a run's run_dir once the run exited 0: "finished"
_KEY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_RESERVED = ("seed", "run_dir")  # set per run by the sweep


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
    mode: str  # grid | random | list
    seeds: list[int]
    params: list[Param]  # grid and random
    overrides: list[str]  # applied to every run
    metrics: list[str]  # summarised in results.md and plotted
    smooth: int = 1  # plots only: each point the mean of the values logged in the last `smooth` steps
    num_samples: int | None = None  # random only
    random_seed: int = 0  # random only: the same sweep file always expands to the same arms (resume needs that)
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)  # list only: arm name -> {dotted key: value}
    lines: dict[tuple, int] = field(default_factory=dict)  # ("key",) / ("overrides", i) -> line in the sweep file

    @property
    def name(self) -> str:
        return self.sweep_dir.name

    @property
    def swept_keys(self) -> list[str]:
        """The config keys the arms differ in, in file order (list mode: every key any arm sets)."""
        if self.mode == "list":
            return list(dict.fromkeys(k for values in self.arms.values() for k in values))
        return [p.key for p in self.params]

    def where_value(self, arm: str, key: str) -> str:
        """file:line where an arm's value of a key is set."""
        return self.where("arms", arm, key) if self.mode == "list" else self.where("params", key)

    def where(self, *key: Any) -> str:
        return _where(self.path, self.lines, key)


def _where(path: Path, lines: dict[tuple, int], key: tuple) -> str:
    """file:line of a key path, e.g. ("params", "reward.mixing") or ("overrides", 2); else of its top-level key."""
    line = lines.get(tuple(key)) or lines.get(tuple(key[:1]))
    return f"{path}:{line}" if line else str(path)


SWEEP_KEYS = {
    "base_config": "the config every run starts from (relative to the sweep file or the repo root)",
    "sweep_dir": "where runs and results go (relative to the current directory)",
    "mode": "grid (every combination of params) | random (num_samples draws from params) | list (the named arms)",
    "num_samples": "random only: how many arms to draw",
    "random_seed": "random only: seeds the draw of arms (default 0)",
    "seeds": "config `seed` of each run of an arm (default [0])",
    "overrides": "key=value overrides applied to every run",
    "params": "dotted config key -> list of values (grid), or {choices: [...]} / {low, high, log} (random)",
    "arms": "list only: arm name -> {dotted config key: value} (e.g. an ablation's named variants)",
    "metrics": "metrics.jsonl keys summarised in results.md and plotted (default [reward/mean, success_rate])",
    "smooth": "plots: each point the mean of a metric's values over the last N steps (default 1: as logged); "
              "results.md's values stay as logged",
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
    if mode not in ("grid", "random", "list"):
        raise bad("mode", mode, "one of: grid, random, list")
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
    smooth = data.get("smooth", 1)
    if type(smooth) is not int or smooth < 1:
        raise bad("smooth", smooth, "an integer >= 1 (steps)")

    raw_params = data.get("params") or {}
    if not isinstance(raw_params, dict):
        raise bad("params", raw_params, "a mapping of dotted config keys to values")
    if mode == "list" and raw_params:
        raise bad("params", raw_params, "no params with mode 'list' (each arm sets its own values under arms)")
    params = [_parse_param(str(k), v, mode, where("params", str(k))) for k, v in raw_params.items()]

    raw_arms = data.get("arms")
    if mode != "list" and raw_arms is not None:
        raise bad("arms", raw_arms, f"no arms with mode '{mode}' (named arms are mode: list)")
    if mode == "list" and (not isinstance(raw_arms, dict) or not raw_arms):
        raise bad("arms", raw_arms, "a mapping of arm name -> {dotted config key: value} with mode 'list'",
                  "arms" if "arms" in data else "mode")
    arms = {str(name): _parse_arm(str(name), values, where("arms", str(name)))
            for name, values in (raw_arms or {}).items()}

    base = _find_base(path, data["base_config"], where("base_config"))
    return Sweep(path=path, base_config=base, sweep_dir=Path(data["sweep_dir"]), mode=mode, seeds=seeds,
                 params=params, overrides=list(overrides), metrics=metrics, smooth=smooth, num_samples=num_samples,
                 random_seed=random_seed, arms=arms, lines=lines)


def _parse_arm(name: str, values: Any, where: str) -> dict[str, Any]:
    """One named arm of mode 'list': its values by dotted config key (none: the base config and overrides alone)."""
    if _safe(name) != name:
        raise SweepError(f"{where}: arm name '{name}' is also its folder name: use letters, digits and ._,=+-")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SweepError(f"{where}: arm '{name}': got {values!r}, expected a mapping of dotted config keys to "
                         f"values, e.g. {{reward.rm_weight: 0.5}}")
    for key, value in values.items():
        if not _KEY_RE.match(str(key)):
            raise SweepError(f"{where}: arm '{name}': '{key}' is not a dotted config key, e.g. reward.rm_weight")
        if key in _RESERVED:
            raise SweepError(f"{where}: arm '{name}': '{key}': the sweep sets it for every run (use `seeds` for "
                             f"seeds)")
        if isinstance(value, (dict, list)):
            raise SweepError(f"{where}: arm '{name}': '{key}': got {value!r}, expected a scalar value (string, "
                             f"number, true/false, null)")
    return {str(k): v for k, v in values.items()}


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
    """Grid: every combination, in file order. Random: num_samples distinct draws, the same ones every time.
    List: the named arms, in file order."""
    if sweep.mode == "list":
        return [Arm(name, dict(values)) for name, values in sweep.arms.items()]
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


def fmt(v: Any) -> str:
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
        name = _safe(",".join(f"{short[k]}={fmt(v)}" for k, v in a.items()) or "base")
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
        for key, value in arm.values.items():
            text = render(value)
            if _parse_override_value(text) != (type(value), value):
                raise SweepError(f"{sweep.where_value(arm.name, key)}: param '{key}': value {value!r} cannot be "
                                 f"passed as an override (got {text!r})")
            o = f"{key}={text}"
            source[o] = f"{sweep.where_value(arm.name, key)}: param '{key}' = {value!r} (arm '{arm.name}')"
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
    # Every run would load these at start and fail the same way: say so once, before any runs.
    for run in runs:
        rm = run.config.reward.rm_path
        if rm and not Path(rm).is_dir():
            raise SweepError(f"arm '{run.arm.name}': reward.rm_path {rm!r} is not a folder; train the reward model "
                             f"first (python -m rl.rm.train ...) or point reward.rm_path at one")
        model = run.config.model.name
        if is_local_path(model) and not Path(model).expanduser().is_dir():
            raise SweepError(f"arm '{run.arm.name}': model.name {model!r} is not a folder; make that model first "
                             f"(an SFT warm start: rl.rft or rl.sft) or point model.name at one")


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
