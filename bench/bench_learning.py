"""Learning benchmark: does RL make the agent better on tasks it never saw? Over seeds, mean ± std.

    python -m bench.bench_learning [--config configs/learn_tiny.yaml] [--seeds 0 1 2] [--out runs/bench_learning]
                                   [--sft-limit 100] [--sft-epochs 20] [--sft-lr 3e-3] [--no-ceiling]
                                   [--rft-rounds 0] [--rft-trials 8] [--rft-per-task 2] [--rft-engines 2]
                                   [--rft-dtype auto|float32|bfloat16] [--rft-unsolved-trials 0]
                                   [--rft-prefer first|shortest]
                                   [--heldout-trials 0] [key=value ...]

Per seed, one rl.rft program: SFT on `--sft-limit` expert conversations of the training tasks (the seed draws
which), its held-out greedy success, then `--rft-rounds` rounds of rejection-sampling fine-tuning (each samples every
training task `--rft-trials` times at `--rft-temperature` and fine-tunes the newest policy on the warm start's
demonstrations plus every round's successes so far, at most `--rft-per-task` distinct ones per task: tau2's verdict
is the only judge; with `--rft-unsolved-trials k` the tasks no sample solved are sampled k times more first;
`--rft-prefer shortest` keeps a task's shortest passes rather than the first found),
held-out success after each (greedy, and with --heldout-trials k its pass^1..k sampled at the rounds' temperature);
its engines (`--rft-engines`, in `--rft-dtype`) play every stage. Then RL (rl.train, configured by --config and the
overrides, from the last policy; train.steps=0 for none, and the last round is the end point).
For context beside it: the expert's success on the same held-out tasks, and a ceiling, SFT on every expert
conversation of the training tasks (one seed, rl.rft with no rounds). With train.validation_tasks=N, each stage's
success on those N training tasks set aside, and the held-out success of the stage each seed's validation picks.
Each program's log is in <out>; a finished program is skipped and rl.rft finishes the stages it has not, so a re-run
completes what is missing.

    <out>/seed<k>/   rl.rft's stages (sft/, eval_sft/, sample<r>/, rft<r>/, eval_rft<r>/, sampled_*/, summary.json)
    <out>/seed<k>/rl/    the RL run's run_dir        <out>/ceiling/   SFT on all expert data and its evaluation
    <out>/*.log          each program's output       <out>/results.json, results.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bench import finish, run_program
from rl.choices import ROLLOUT_DTYPES
from rl.config import load_config
from rl.demonstrations import PREFERENCES
from rl.rft import policy_folders


def _run(args: list[str], log: Path) -> None:
    run_program("bench_learning", args, log)


def _recipe(args, seed: int, root: Path, sft_limit: int, rounds: int, overrides: list[str]) -> dict:
    """rl.rft: the warm start and `rounds` rejection-sampling rounds in `root`; its summary.json."""
    summary = root / "summary.json"
    if not summary.is_file() or len(json.loads(summary.read_text())["rft"]) < rounds:
        engines = [f"rollout.dtype={args.rft_dtype}", f"rollout.num_workers={args.rft_engines}",
                   f"env_pool.num_workers={args.rft_engines}"]
        _run(["-m", "rl.rft", "--config", args.config, f"seed={seed}", "--out", str(root), "--sft-limit",
              str(sft_limit), "--sft-epochs", str(args.sft_epochs), "--sft-lr", str(args.sft_lr), "--rounds",
              str(rounds), "--trials", str(args.rft_trials), "--temperature", str(args.rft_temperature),
              "--per-task", str(args.rft_per_task), "--epochs", str(args.rft_epochs), "--lr", str(args.rft_lr),
              "--unsolved-trials", str(args.rft_unsolved_trials), "--prefer", args.rft_prefer,
              "--heldout-trials", str(args.heldout_trials if rounds else 0), *overrides, *engines],
             root.parent / f"{root.name}.log")
    return json.loads(summary.read_text())


def _train(config: str, seed: int, model: Path, run_dir: Path, overrides: list[str]) -> list[dict]:
    from rl.run_dir import read_jsonl

    if not (run_dir / "report.png").is_file():  # written when a run ends
        resume = ["--resume"] if (run_dir / "metrics.jsonl").is_file() else []
        _run(["-m", "rl.train", "--config", config, f"seed={seed}", f"run_dir={run_dir}", f"model.name={model}",
              *overrides, *resume], run_dir.parent / f"{run_dir.name}.log")
    return read_jsonl(run_dir / "metrics.jsonl")


def _native_bf16() -> bool:
    """A CPU with bfloat16 instructions (AVX512-BF16 or AMX), where a bfloat16 engine samples faster than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _last_heldout(rows: list[dict], run_dir: Path) -> dict:
    """The eval metrics of an RL run's last evaluated step."""
    evals = [r for r in rows if "eval/success" in r]
    if not evals:
        raise SystemExit(f"bench_learning: {run_dir}/metrics.jsonl has no eval/success: set train.eval_tasks > 0")
    return evals[-1]


def _expert_success(config: str, overrides: list[str]) -> float:
    """The scripted expert's success on the config's held-out tasks."""
    from envs.tau2_telecom.replay import replay_task
    from envs.tau2_telecom.session import TelecomSession
    from envs.tau2_telecom.tau2_api import Task
    from envs.tau2_telecom.users import ScriptedUser
    from envs.tau2_telecom.world import get_world
    from rl.runtime import split_tasks

    cfg = load_config(config, overrides)
    tasks = [Task.model_validate(t) for t in split_tasks(cfg).heldout.values()]
    session = TelecomSession(get_world(cfg.env.policy), user=ScriptedUser(), prompt=cfg.env.prompt)
    return sum(replay_task(session, t, cfg.env.mode, "expert").success for t in tasks) / max(1, len(tasks))


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/learn_tiny.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench_learning")
    ap.add_argument("--sft-limit", type=int, default=100, help="expert conversations in each seed's warm start")
    ap.add_argument("--sft-epochs", type=int, default=20)
    ap.add_argument("--sft-lr", type=float, default=3e-3, help="peak lr of the SFT warm start (warm-up, then decay)")
    ap.add_argument("--no-ceiling", action="store_true", help="skip SFT on all expert data")
    ap.add_argument("--rft-rounds", type=int, default=0, help="rejection-sampling rounds between SFT and RL")
    ap.add_argument("--rft-trials", type=int, default=8, help="samples of each training task per round")
    ap.add_argument("--rft-temperature", type=float, default=0.7)
    ap.add_argument("--rft-per-task", type=int, default=2, help="distinct successes kept per task")
    ap.add_argument("--rft-engines", type=int, default=2,
                    help="rl.rft's vLLM engines (sampling and held-out evaluations), 64 episodes in flight each (a "
                         "CPU engine runs its model on one thread: one per core)")
    ap.add_argument("--rft-dtype", choices=ROLLOUT_DTYPES, default="bfloat16" if _native_bf16() else "auto",
                    help="rl.rft's engines' dtype (rollout.dtype; default: bfloat16 on a CPU with bf16 instructions, "
                         "1.3-1.45x faster; every stage is evaluated in it, so before and after are measured alike)")
    ap.add_argument("--rft-epochs", type=int, default=3)
    ap.add_argument("--rft-lr", type=float, default=1e-3)
    ap.add_argument("--rft-unsolved-trials", type=int, default=0,
                    help="each round, sample the training tasks none of its samples solved this many times more")
    ap.add_argument("--rft-prefer", choices=PREFERENCES, default="first",
                    help="which of a task's passes --rft-per-task keeps: the first found, or the shortest")
    ap.add_argument("--heldout-trials", type=int, default=0,
                    help="with rounds: also sample the held-out tasks this many times at --rft-temperature at the "
                         "start and after each round (tau2's pass^k; less noisy than one greedy pass)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every step")
    # key=value items anywhere on the line are overrides (argparse alone would read them as more --seeds)
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = ap.parse_args([a for a in argv if a not in overrides])
    args.overrides = overrides
    if args.rft_engines < 1:
        ap.error("--rft-engines must be >= 1")
    if args.heldout_trials < 0 or (args.heldout_trials and not args.rft_rounds):
        ap.error("--heldout-trials needs --rft-rounds (it samples the start and each round's policy) and must be >= 0")
    out = Path(args.out)

    report: dict = {"config": args.config, "overrides": args.overrides, "seeds": args.seeds,
                    "sft_limit": args.sft_limit, "sft_epochs": args.sft_epochs, "sft_lr": args.sft_lr,
                    "rft": {k: getattr(args, f"rft_{k}") for k in ("rounds", "trials", "temperature", "dtype",
                                                                    "engines", "per_task", "epochs", "lr",
                                                                    "unsolved_trials", "prefer")},
                    "heldout_trials": args.heldout_trials,
                    "runs": {}}
    cfg = load_config(args.config, args.overrides)
    for seed in args.seeds:
        root = out / f"seed{seed}"
        recipe = _recipe(args, seed, root, args.sft_limit, args.rft_rounds, args.overrides)
        rft = recipe["rft"]
        if cfg.train.steps:
            rows = _train(args.config, seed, policy_folders(root, args.rft_rounds)[-1], root / "rl", args.overrides)
            after = _last_heldout(rows, root / "rl")
        else:  # no RL: the last stage's held-out evaluation is the end point
            rows, after = [], {**(rft[-1]["heldout"] if rft else recipe["before"]), "step": 0}
        report["runs"][seed] = {"before": recipe["before"], "after": after, "steps": after["step"], "rft": rft,
                                "before_sampled": recipe["before_sampled"],
                                "before_validation": recipe.get("before_validation"),
                                "train_success": [r.get("success_rate") for r in rows if r["step"] > 0],
                                "tool_calls": [r.get("episode/tool_calls") for r in rows if r["step"] > 0]}
    runs = report["runs"].values()
    report["before"] = _mean_std([r["before"]["eval/success"] for r in runs])
    report["after"] = _mean_std([r["after"]["eval/success"] for r in runs])
    report["gain"] = _mean_std([r["after"]["eval/success"] - r["before"]["eval/success"] for r in runs])
    tasks = int(next(iter(runs))["before"]["eval/tasks"])
    report["expert"] = _expert_success(args.config, args.overrides)
    if not args.no_ceiling:
        ceiling = _recipe(args, args.seeds[0], out / "ceiling", 0, 0, args.overrides)  # every expert conversation
        report["ceiling"] = ceiling["before"]["eval/success"]
    (out / "results.md").write_text("\n".join(_table(report, tasks)) + "\n")
    finish(report, str(out / "results.json"), lambda r: print("\n".join(_table(r, tasks))))
    where = f"{cfg.train.eval_split}, {tasks} tasks"
    for seed, run in report["runs"].items():  # rl.train's line, one per seed
        print(f"held-out success ({where}): before {run['before']['eval/success']:.2f} -> after "
              f"{run['after']['eval/success']:.2f}" + (f" (seed {seed})" if len(args.seeds) > 1 else ""))
    return 0


def _chosen_by_validation(runs: list[dict], rounds: int) -> list[int]:
    """Per seed, the number of rounds whose policy did best on the validation tasks (0: the warm start; the fewer
    rounds on a tie): how many rounds to keep, chosen without looking at a held-out number."""
    def val(run, i):
        return (run["rft"][i - 1]["validation"] if i else run["before_validation"])["eval/success"]

    return [max(range(rounds + 1), key=lambda i: (val(run, i), -i)) for run in runs]


def _retry_words(rft: dict) -> str:
    k = rft.get("unsolved_trials", 0)  # results from before the flag existed: 0
    return f", the tasks none of them solved {k} times more" if k else ""


def _table(r: dict, tasks: int) -> list[str]:
    def ms(d: dict) -> str:
        return f"{d['mean']:.3f} ± {d['std']:.3f}"

    faults = sorted({k for run in r["runs"].values() for k in run["after"] if k.startswith("eval/success/faults_")},
                    key=lambda k: int(k.rsplit("_", 1)[1]))
    runs = list(r["runs"].values())
    rounds = min(len(run["rft"]) for run in runs)
    rft = (f", {rounds} round{'s' * (rounds > 1)} of rejection sampling ({r['rft']['trials']} samples per training "
           f"task at {r['rft']['temperature']}{_retry_words(r['rft'])}, up to {r['rft']['per_task']} "
           f"{'of the shortest ' if r['rft'].get('prefer') == 'shortest' else ''}successes per task)" if rounds else "")
    steps = runs[0]["steps"]
    rl = f"then RL ({steps} steps)" if steps or not rounds else "no RL after them"
    lines = [f"Held-out greedy success ({tasks} tasks), {len(runs)} seed{'s' * (len(runs) > 1)} ({r['config']} "
             f"{' '.join(r['overrides'])}), SFT on {r['sft_limit']} expert conversations{rft}, {rl}:", "",
             "| | held-out success | training tasks' success, sampled |", "|---|---|---|",
             f"| SFT start | {ms(r['before'])} | |"]
    for i in range(rounds):
        held = _mean_std([run["rft"][i]["heldout"]["eval/success"] for run in runs])
        sampled = _mean_std([run["rft"][i]["train_success"] for run in runs])
        retry = ""
        if all("unsolved" in run["rft"][i] for run in runs):
            unsolved, solved = (statistics.mean(run["rft"][i][k] for run in runs)
                                for k in ("unsolved", "unsolved_then_solved"))
            retry = f"; {unsolved:.0f} tasks unsolved, {solved:.0f} of them solved by the extra samples (mean)"
        lines.append(f"| after rejection-sampling round {i + 1} | {ms(held)} | {ms(sampled)} (before the round)"
                     f"{retry} |")
    if steps or not rounds:
        lines.append(f"| after RL | {ms(r['after'])} | |")
    lines.append(f"| gain | {ms(r['gain'])} | |")
    if "ceiling" in r:
        lines.append(f"| ceiling: SFT on all expert data (seed {r['seeds'][0]}) | {r['ceiling']:.3f} |")
    lines.append(f"| the expert (scripted, same tasks) | {r['expert']:.3f} |")
    k = r.get("heldout_trials", 0)
    if rounds and k:
        stages = [("SFT start", [run["before_sampled"] for run in runs])] + [
            (f"after rejection-sampling round {i + 1}", [run["rft"][i]["heldout_sampled"] for run in runs])
            for i in range(rounds)]
        lines += ["", f"The held-out tasks sampled {k} times each at {r['rft']['temperature']} (tau2's pass^k):", "",
                  f"| | pass^1 | pass^{k} |", "|---|---|---|"]
        lines += [f"| {name} | {ms(_mean_std([p['1'] for p in ps]))} | {ms(_mean_std([p[str(k)] for p in ps]))} |"
                  for name, ps in stages]
        lines.append(f"| gain | {ms(_mean_std([b['1'] - a['1'] for a, b in zip(stages[0][1], stages[-1][1])]))} | |")
    if runs[0].get("before_validation"):  # train.validation_tasks: what settings may be chosen by
        stages = [("SFT start", [run["before_validation"] for run in runs])] + [
            (f"after rejection-sampling round {i + 1}", [run["rft"][i]["validation"] for run in runs])
            for i in range(rounds)]
        lines += ["", f"Validation: {int(runs[0]['before_validation']['eval/tasks'])} training tasks set aside "
                  "(greedy; to choose settings by, never trained on):", "", "| | validation success |", "|---|---|"]
        lines += [f"| {name} | {ms(_mean_std([v['eval/success'] for v in vs]))} |" for name, vs in stages]
        picked = _chosen_by_validation(runs, rounds)
        held = _mean_std([run["rft"][i - 1]["heldout"]["eval/success"] if i else run["before"]["eval/success"]
                          for run, i in zip(runs, picked)])
        lines += ["", f"Each seed's stage with the best validation success (rounds {' / '.join(map(str, picked))}; "
                  f"0 = the start, the earlier on a tie): held-out greedy {ms(held)}, gain "
                  f"{ms(_mean_std([h - run['before']['eval/success'] for run, h in zip(runs, held['values'])]))}"]
    lines += ["", "Per number of faults (mean over seeds):", "",
              "| faults | " + " | ".join(k.rsplit("_", 1)[1] for k in faults) + " |", "|---|" + "---|" * len(faults)]
    for when in ("before", "after"):
        vals = [statistics.mean(run[when].get(k, 0.0) for run in r["runs"].values()) for k in faults]
        lines.append(f"| {when} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
