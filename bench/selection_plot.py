"""The reward-selection ablation's plot (bench_selection): each arm's held-out gain over its own run's SFT start,
greedy and sampled pass^1 side by side, a point per run and seed with a run's arms joined (they share the start and
the samples, so the lines are the paired comparison), and each arm's mean ± std over all of them. A run fine-tuned in
several orders (bench_selection --orders) is plotted at its order mean, with a bar from its lowest to its highest order.

    python -m bench.selection_plot runs/bench_sel0/results.json runs/bench_sel1/results.json --out selection.png

bench_selection draws its own run's as <out>/results.png. Several results files go on one plot because the
ablation's seeds ran in separate sessions (one bench_selection --out each).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

Gains = dict[str, dict[str, float]]  # run label -> arm -> gain
Ranges = dict[str, dict[str, tuple[float, float]]]  # run label -> arm -> (lowest, highest) gain over orders


def _greedy_gain(r: dict) -> float:
    return r["heldout"] - r["before"]


def _sampled_gain(r: dict) -> float:
    return r["heldout_sampled"] - r["before_sampled"]


def paired_gains(reports: dict[str, dict]) -> tuple[list[str], Gains, Gains]:
    """(arms in order of first appearance, {run label: {arm: greedy gain}}, the same for the sampled gain) from
    bench_selection reports keyed by a name for each; a run is one seed of one report."""
    arms: list[str] = []
    greedy: Gains = {}
    sampled: Gains = {}
    for name, report in reports.items():
        for seed, by_arm in report["runs"].items():
            label = f"{name} seed {seed}"
            greedy[label], sampled[label] = {}, {}
            for arm, r in by_arm.items():
                if arm not in arms:
                    arms.append(arm)
                greedy[label][arm] = _greedy_gain(r)
                sampled[label][arm] = _sampled_gain(r)
    return arms, greedy, sampled


def order_ranges(reports: dict[str, dict]) -> tuple[Ranges, Ranges]:
    """The lowest and highest gain of each run's arm over its fine-tuning orders, greedy then sampled, for the arms
    fine-tuned in more than one order (reports from before bench_selection --orders have none)."""
    greedy: Ranges = {}
    sampled: Ranges = {}
    for name, report in reports.items():
        for seed, by_arm in (report.get("orders") or {}).items():
            for arm, results in by_arm.items():
                if len(results) > 1:
                    for ranges, gain in ((greedy, _greedy_gain), (sampled, _sampled_gain)):
                        gains = [gain(r) for r in results]
                        ranges.setdefault(f"{name} seed {seed}", {})[arm] = (min(gains), max(gains))
    return greedy, sampled


def plot(reports: dict[str, dict], out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms, *measures = paired_gains(reports)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, gains, ranges, title in zip(axes, measures, order_ranges(reports),
                                        ("held-out greedy success", "held-out pass^1, sampled")):
        for i, (label, by_arm) in enumerate(gains.items()):
            ran = [a for a in arms if a in by_arm]  # left to right, whatever order the run's arms ran in
            xs = [arms.index(a) + 0.06 * (i - (len(gains) - 1) / 2) for a in ran]
            (line,) = ax.plot(xs, [by_arm[a] for a in ran], "o-", alpha=0.6, lw=1, ms=4, label=label)
            for x, arm in zip(xs, ran):
                if arm in ranges.get(label, {}):
                    ax.vlines(x, *ranges[label][arm], color=line.get_color(), alpha=0.35, lw=3)
        for x, arm in enumerate(arms):
            values = [by_arm[arm] for by_arm in gains.values() if arm in by_arm]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.errorbar(x + 0.3, statistics.mean(values), yerr=std, fmt="D", color="black", capsize=4, ms=5)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(arms)), arms)
        ax.set_title(f"{title}: gain over the SFT start")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("gain (40 held-out tasks)")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle("One rejection-sampling round, what each arm imitates (points: runs, at their mean over fine-tuning "
                 "orders; bars: lowest to highest order; black: mean ± std over runs)", fontsize=9)
    fig.tight_layout()
    path = Path(out)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="bench_selection's results.json files")
    ap.add_argument("--out", required=True, help="the PNG to write")
    args = ap.parse_args(argv)
    reports = {}
    for path in args.results:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            report = {"error": repr(e)}
        if not isinstance(report, dict):
            report = {"error": "not a JSON object"}
        if not isinstance(report.get("runs"), dict):  # another bench's results have no per-seed arms
            print(f"selection_plot: {path}: not a bench_selection results.json "
                  f"({report.get('error', 'no runs per seed and arm')})", file=sys.stderr)
            return 2
        reports[Path(path).parent.name] = report
    print(plot(reports, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
