"""The reward-mixing ablation on the recipe that learns: which reward should choose what a rejection-sampling round
imitates? Over seeds, mean ± std.

    python -m bench.bench_selection --rm RM_FOLDER [--config configs/learn_tiny.yaml] [--seeds 0 1 2]
                                    [--out runs/bench_selection] [--start BENCH_LEARNING_OUT] [--arms ...]
                                    [--orders 1] [--rft-engines 2] [--rft-dtype auto|float32|bfloat16]
                                    [key=value ...]

Per seed, the arms share the warm start and its round-1 samples (the SFT policy sampling every training task 8
times), so they differ only in what their one round fine-tunes on (rl.rft --select; rl/rft_selection.py):
  verifier   tau2's passes, at most 2 a task (the recipe's own selection)
  rm_only    the reward model alone: each task's 2 top-scored samples, passed or not
  gated      tau2's passes, the reward model choosing which 2 (gated mixing, --min-reward 1)
  weighted   tau2 + 0.5 x the reward model, no floor: passes first, then the reward model's favourite failures, up
             to 2 a task
No multiplicative arm: with tau2's 0/1 reward as the checks, checks x (1 - w + w x rm) is 0 for every failure, so with a
floor it keeps what gated keeps (the passes, ranked by the reward model), and without one a task with no pass gets its
first-sampled failures, not reward-ranked ones (tests/test_rft_selection.py).
The shared stages (sft/, eval_sft/, sampled_sft/, sample1/) are linked from --start's seed<k>/ (bench_learning's
output with --rft-rounds >= 1, the same recipe: bench_learning's defaults) when given; else the verifier arm makes
them. Reported per arm: held-out greedy and sampled success after the round, the conversations it imitated and how
many of them tau2 passes; per seed, the reward model's on-policy audit on the shared samples (rl/reward_audit.py).
With --orders N each arm's round is fine-tuned N times on the same data, each time in its own order (<arm>_order<j>/):
on this task a reshuffle alone has moved held-out greedy success by 0.2, as much as the arms differ. The table then
holds each arm's mean over its orders, and a list below it each order's numbers and their spread.

    <out>/seed<k>/<arm>/   rl.rft's folder (summary.json: the round's selection record); <arm>_order<j>/ likewise
    <out>/seed<k>/<arm>.log, <out>/results.json, results.md, results.png (bench/selection_plot.py)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import finish, run_program
from bench.bench_learning import _mean_std as _ms
from bench.bench_learning import _native_bf16
from bench.selection_plot import plot
from rl.choices import ROLLOUT_DTYPES

# arm -> (rl.rft flags, reward overrides). Every reward arm scores tau2's 0/1 reward and the RM alone (the episode
# files keep no partial credit), so those weights are 0 for all of them.
ARMS = {
    "verifier": ([], []),
    "rm_only": (["--select", "reward"], ["reward.task_weight=0", "reward.rm_weight=1", "reward.mixing=weighted"]),
    "gated": (["--select", "reward", "--min-reward", "1"],
              ["reward.task_weight=1", "reward.rm_weight=0.5", "reward.mixing=gated"]),
    "weighted": (["--select", "reward"], ["reward.task_weight=1", "reward.rm_weight=0.5", "reward.mixing=weighted"]),
}
SCORED_BY_TAU2_AND_RM = ["reward.env_assertion_weight=0", "reward.action_weight=0", "reward.malformed_call_penalty=0"]
SHARED = ("sft", "eval_sft", "sampled_sft", "sample1")
# bench_learning's recipe (its defaults), so --start's stages are this recipe's
RECIPE = ["--sft-limit", "100", "--sft-epochs", "20", "--sft-lr", "0.003", "--rounds", "1", "--trials", "8",
          "--temperature", "0.7", "--per-task", "2", "--epochs", "3", "--lr", "0.001", "--heldout-trials", "4"]


def _link_shared(source: Path, arm_dir: Path) -> None:
    """The warm start and round 1's samples of `source` (an rl.rft folder) into `arm_dir`, as links."""
    missing = [n for n in SHARED if not (source / n / ("config.json" if n == "sft" else "report.json")).is_file()]
    if missing:
        raise SystemExit(f"bench_selection: {source} has no finished {', '.join(missing)}: run bench_learning with "
                         "--rft-rounds 1 --heldout-trials 4 there first, or leave out --start")
    arm_dir.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        if not (arm_dir / name).exists():
            (arm_dir / name).symlink_to((source / name).resolve(), target_is_directory=True)


def _arm_result(summary: dict) -> dict:
    """One arm's numbers from its rl.rft summary.json."""
    round1 = summary["rft"][0]
    record = summary.get("selection", {}).get("rft1")
    imitated = summary["fine_tuning"]["rft1"]["own"]
    return {"heldout": round1["heldout"]["eval/success"], "heldout_sampled": round1["heldout_sampled"]["1"],
            "before": summary["before"]["eval/success"], "before_sampled": summary["before_sampled"]["1"],
            "imitated": imitated,
            # the verifier imitates passes only; a reward arm's record says how many of its choices pass
            "imitated_passing": record["chosen_passing"] if record else imitated,
            "audit": (record or {}).get("rm_vs_verifier")}


def _order_mean(results: list[dict]) -> dict:
    """One arm's numbers over its fine-tuning orders: held-out success averaged; the rest is the same data's."""
    return {**results[0], **{k: sum(r[k] for r in results) / len(results) for k in ("heldout", "heldout_sampled")}}


def _table(report: dict) -> list[str]:
    def ms(d: dict) -> str:
        return f"{d['mean']:.3f} ± {d['std']:.3f}"

    seeds = report["seeds"]
    lines = [f"One rejection-sampling round from a shared SFT start and shared samples, {len(seeds)} seeds "
             f"({report['config']}; reward model {report['rm']}); held-out: {report['tasks']} tasks:", "",
             "| arm | conversations imitated | of them tau2 passes | held-out greedy | gain | held-out pass^1 "
             "(4 samples) | gain |", "|---|---|---|---|---|---|---|"]
    start = report["start"]
    lines.append(f"| SFT start | | | {ms(start['heldout'])} | | {ms(start['heldout_sampled'])} | |")
    for arm, r in report["arms"].items():
        lines.append(f"| {arm} | {r['imitated']['mean']:.0f} | {ms(r['passing_share'])} | {ms(r['heldout'])} | "
                     f"{ms(r['gain'])} | {ms(r['heldout_sampled'])} | {ms(r['gain_sampled'])} |")
    if any(len(results) > 1 for by_arm in report["orders"].values() for results in by_arm.values()):
        lines += ["", "Each arm's round fine-tuned on its data in several orders (the table: their mean); held-out "
                  "success of each order, and the std over orders (mean over seeds):", ""]
        for arm in report["arms"]:
            spread = {k: _ms([_ms([r[k] for r in by_arm[arm]])["std"] for by_arm in report["orders"].values()])
                      for k in ("heldout", "heldout_sampled")}
            each = "; ".join(f"seed {seed} greedy " + " / ".join(f"{r['heldout']:.3f}" for r in by_arm[arm])
                             + ", sampled " + " / ".join(f"{r['heldout_sampled']:.3f}" for r in by_arm[arm])
                             for seed, by_arm in report["orders"].items())
            lines.append(f"- {arm}: {each}; std over orders: greedy {spread['heldout']['mean']:.3f}, sampled "
                         f"{spread['heldout_sampled']['mean']:.3f}")
    audits = [a for a in report["audit"].values() if a]
    if audits:
        keys = [k for k in ("pairwise_acc", "pairwise_acc_same_ending", "best_of_group", "spearman_checks")
                if all(k in a for a in audits)]
        lines += ["", "The reward model against tau2 on each seed's round-1 samples (on-policy audit, mean ± std "
                  "over seeds): " + ", ".join(f"{k} {ms(_ms([a[k] for a in audits]))}" for k in keys)]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rm", required=True, help="the reward model folder (python -m rl.rm.train's rm.out)")
    ap.add_argument("--config", default="configs/learn_tiny.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench_selection")
    ap.add_argument("--start", help="a bench_learning --out whose seed<k>/ hold the shared stages")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--orders", type=int, default=1,
                    help="fine-tune each arm's round this many times on the same data, each in its own order (rl.rft "
                         "--order-seed 1..N-1; the first keeps the default order); an arm's numbers are their mean")
    ap.add_argument("--rft-engines", type=int, default=2, help="rl.rft's vLLM engines (as bench_learning's)")
    ap.add_argument("--rft-dtype", choices=ROLLOUT_DTYPES, default="bfloat16" if _native_bf16() else "auto",
                    help="rl.rft's engines' dtype (as bench_learning's)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every arm")
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = ap.parse_args([a for a in argv if a not in overrides])
    if args.orders < 1:
        ap.error(f"--orders {args.orders}: at least 1")
    if not (Path(args.rm) / "telerl_rm.json").is_file():
        ap.error(f"--rm {args.rm}: not a trained reward model folder (no telerl_rm.json; python -m rl.rm.train)")
    out, rm = Path(args.out), str(Path(args.rm).resolve())
    engines = [f"rollout.dtype={args.rft_dtype}", f"rollout.num_workers={args.rft_engines}",
               f"env_pool.num_workers={args.rft_engines}", "train.steps=0"]
    arms = sorted(args.arms, key=lambda a: a != "verifier")  # without --start the verifier arm makes the shared stages

    report: dict = {"config": args.config, "overrides": overrides, "seeds": args.seeds, "rm": rm, "start": {},
                    "arms": {}, "audit": {}, "runs": {}, "orders": {}}
    for seed in args.seeds:
        shared = Path(args.start) / f"seed{seed}" if args.start else out / f"seed{seed}" / "verifier"
        for arm in arms:
            flags, reward = ARMS[arm]
            if reward:
                reward = [*SCORED_BY_TAU2_AND_RM, f"reward.rm_path={rm}", *reward]
            results = []
            for order in range(args.orders):
                name = arm if order == 0 else f"{arm}_order{order}"
                folder = out / f"seed{seed}" / name
                if folder != shared:
                    _link_shared(shared, folder)
                if not (folder / "summary.json").is_file():
                    ordered = ["--order-seed", str(order)] if order else []
                    run_program("bench_selection", ["-m", "rl.rft", "--config", args.config, f"seed={seed}", "--out",
                                                    str(folder), *RECIPE, *flags, *ordered, *overrides, *engines,
                                                    *reward], folder.parent / f"{name}.log")
                summary = json.loads((folder / "summary.json").read_text())
                results.append(_arm_result(summary))
                report["tasks"] = summary["before"]["eval/tasks"]
            report["orders"].setdefault(seed, {})[arm] = results
            report["runs"].setdefault(seed, {})[arm] = _order_mean(results)
        audits = [r["audit"] for r in report["runs"][seed].values() if r["audit"]]
        report["audit"][seed] = audits[0] if audits else None  # the same samples: every reward arm's audit is one

    runs = list(report["runs"].values())
    report["start"] = {"heldout": _ms([r[arms[0]]["before"] for r in runs]),
                       "heldout_sampled": _ms([r[arms[0]]["before_sampled"] for r in runs])}
    for arm in args.arms:
        rs = [r[arm] for r in runs]
        report["arms"][arm] = {
            "imitated": _ms([r["imitated"] for r in rs]),
            "passing_share": _ms([r["imitated_passing"] / max(1, r["imitated"]) for r in rs]),
            "heldout": _ms([r["heldout"] for r in rs]), "gain": _ms([r["heldout"] - r["before"] for r in rs]),
            "heldout_sampled": _ms([r["heldout_sampled"] for r in rs]),
            "gain_sampled": _ms([r["heldout_sampled"] - r["before_sampled"] for r in rs])}
    (out / "results.md").write_text("\n".join(_table(report)) + "\n")
    plot({out.name: report}, out / "results.png")
    finish(report, str(out / "results.json"), lambda r: print("\n".join(_table(r))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
