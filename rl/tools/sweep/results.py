"""Sweep results: every run's metrics.jsonl and status collected into RunResults, then results.csv (one row per
run), results.md (mean ± std over seeds per arm, failed runs with their log tail) and the learning-curve plots.
"""
from __future__ import annotations

import bisect
import csv
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from rl.config import redact_overrides
from rl.tools.sweep.runners import Attempt
from rl.tools.sweep.spec import DONE_FILE, Run, Sweep, finished, fmt

LOG_TAIL_LINES = 30


@dataclass
class RunResult:
    run: Run
    status: str  # finished | failed | not run
    skipped: bool  # finished in an earlier invocation
    wall_s: float | None
    curve: list[dict]  # metrics.jsonl rows, one per step (the last write of a step wins: resumes re-log steps)
    final: dict  # the last step's metrics, + heldout/success_before/_after when the run evaluated
    error: str = ""  # failed: the message and the tail of the log


def read_metrics(run_dir: Path) -> list[dict]:
    from rl.run_dir import read_jsonl

    by_step = {int(row["step"]): row for row in read_jsonl(run_dir / "metrics.jsonl") if "step" in row}
    return [by_step[s] for s in sorted(by_step)]


def _log_tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    if not path.is_file():
        return "(no log)"
    lines = path.read_text(errors="replace").splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("=== ")), default=0)  # the last attempt
    return "\n".join(lines[start:][-n:])


def _heldout(curve: list[dict]) -> dict:
    """Held-out greedy success of the starting weights (step 0's eval/success) and of the last evaluated step."""
    evals = [row for row in curve if "eval/success" in row]
    out = {}
    if evals and evals[0]["step"] == 0:
        out["heldout/success_before"] = evals[0]["eval/success"]
    if evals and evals[-1]["step"] > 0:
        out["heldout/success_after"] = evals[-1]["eval/success"]
    return out


def collect(runs: list[Run], attempts: dict[int, Attempt]) -> list[RunResult]:
    """attempts: id(run) -> this invocation's attempt; runs not attempted were finished before (or not run)."""
    out = []
    for run in runs:
        attempt = attempts.get(id(run))
        curve = read_metrics(run.run_dir)
        final = {k: v for k, v in (curve[-1] if curve else {}).items() if isinstance(v, (int, float))}
        final.update(_heldout(curve))
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
    keys = sweep.swept_keys
    chosen = list(sweep.metrics)
    others = sorted({k for r in results for k in r.final} - set(chosen) - {"step"})

    csv_path = out / "results.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arm", "seed", "status", "skipped", "steps", *keys, *chosen, *others, "wall_s", "run_dir",
                    "log", "error"])
        for r in results:
            w.writerow([r.run.arm.name, r.run.seed, r.status, r.skipped, r.final.get("step", ""),
                        *(r.run.arm.values.get(k, "") for k in keys), *(r.final.get(m, "") for m in chosen + others),
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
        md += ["Every run: " + ", ".join(f"`{o}`" for o in redact_overrides(sweep.overrides)), ""]
    md += ["Final values (each run's last logged step), mean ± std (sample std) over the arm's finished seeds; "
           "one finished seed shows its value alone.", "",
           "| arm | " + " | ".join(keys + ["seeds"] + chosen) + " |",
           "|" + "---|" * (len(keys) + len(chosen) + 2)]
    missing = [m for m in chosen if not any(m in r.final for r in results if r.status == "finished")]
    for a in arms:
        done = [r for r in by_arm[a] if r.status == "finished"]
        arm_values = by_arm[a][0].run.arm.values  # list mode: a key this arm leaves alone shows as "-"
        cells = [fmt(arm_values[k]) if k in arm_values else "-" for k in keys] + [f"{len(done)}/{len(by_arm[a])}"]
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


def _series(curve: list[dict], metric: str, smooth: int = 1) -> list[tuple[int, float]]:
    """(step, value) wherever the run logged the metric; with smooth > 1 each value is the mean of those logged in
    the last `smooth` steps (a window in steps, so a metric logged every 8 steps stays as it is at smooth=4)."""
    points = [(int(row["step"]), float(row[metric])) for row in curve if isinstance(row.get(metric), (int, float))]
    if smooth == 1:
        return points
    points.sort(key=lambda p: p[0])
    steps, values = [s for s, _ in points], [v for _, v in points]
    # each window found by bisection: steps x window, not steps^2 (a run can log thousands of steps)
    return [(s, statistics.mean(values[bisect.bisect_right(steps, s - smooth):i + 1])) for i, s in enumerate(steps)]


def _mean_curve(curves: list[list[dict]], metric: str, smooth: int = 1) -> tuple[list[int], list[float], list[float]]:
    """Mean and std over seeds at every step some seed logged the metric."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for step, value in _series(curve, metric, smooth):
            by_step.setdefault(step, []).append(value)
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

    smoothed = f" (mean over {sweep.smooth} steps)" if sweep.smooth > 1 else ""

    def panels(title: str):
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
        fig.suptitle(title, fontsize=10)
        for ax, m in zip(axes[0], metrics):
            ax.set_title(m + smoothed, fontsize=9)
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        return fig, axes[0]

    def band(ax, curves, m, label, color):
        steps, mean, std = _mean_curve(curves, m, sweep.smooth)
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
                points = _series(r.curve, m, sweep.smooth)
                ax.plot([s for s, _ in points], [v for _, v in points], lw=0.8, alpha=0.5, color="gray",
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
