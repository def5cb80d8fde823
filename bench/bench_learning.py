"""Learning benchmark: does RL make the agent better on tasks it never saw? Over seeds, mean ± std.

    python -m bench.bench_learning [--config configs/learn_tiny.yaml] [--seeds 0 1 2] [--out runs/bench_learning]
                                   [--sft-limit 100] [--sft-epochs 20] [--sft-lr 3e-3] [--no-ceiling]
                                   [--rft-rounds 0] [--rft-trials 8] [--rft-per-task 2] [--rft-engines 2]
                                   [--rft-dtype auto|float32|bfloat16] [--heldout-trials 0] [key=value ...]

Per seed: SFT on `--sft-limit` expert conversations of the training tasks (rl.sft, the seed draws which), then
`--rft-rounds` rounds of rejection-sampling fine-tuning (each samples every training task `--rft-trials` times at
`--rft-temperature` with rl.evaluate, on `--rft-engines` engines in `--rft-dtype`, and fine-tunes the newest policy
on the warm start's demonstrations plus every round's successes so far, at most `--rft-per-task` distinct ones per
task: tau2's verdict is the only judge), then RL
(rl.train, configured by --config and the overrides; train.steps=0 for none), held-out success before (the SFT
start) and after. With RFT rounds, each stage's held-out greedy success is measured with rl.evaluate as well (and,
with --heldout-trials k, its pass^1..k sampled at the rounds' temperature); with rounds and train.steps=0 there is
no RL run and the last round is the end point.
For context beside it: the expert's success on the same held-out tasks, and a ceiling, SFT on every expert
conversation of the training tasks (one seed), evaluated the same way (rl.train train.steps=0). Every step is a
subprocess with its log in <out>; a step whose output exists is skipped, so a re-run finishes what is missing.

    <out>/seed<k>/sft/           the warm start (HF folder)        <out>/seed<k>/rl/    the RL run's run_dir
    <out>/seed<k>/sample<r>/     round r's episodes on the training tasks (rl.evaluate)
    <out>/seed<k>/rft<r>/        round r's policy                  <out>/seed<k>/eval_<stage>/   held-out greedy
    <out>/seed<k>/sampled_<stage>/  held-out sampled (--heldout-trials)
    <out>/ceiling/sft/, rl/      SFT on all expert data, its eval  <out>/*.log          each step's output
    <out>/results.json, results.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import finish
from rl.choices import ROLLOUT_DTYPES
from rl.config import load_config


def _run(args: list[str], log: Path) -> None:
    """One pipeline step as a subprocess (its own Ray cluster), output appended to `log`; a failure stops here.
    The console gets a line per step: the program, its log, how long it took."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"bench_learning: {args[1]} (log: {log}) ...", end="", flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"=== {' '.join(args)}\n")
        fh.flush()
        done = subprocess.run([sys.executable, *args], stdout=fh, stderr=subprocess.STDOUT)
    print(f" {time.perf_counter() - t0:.0f} s", flush=True)
    if done.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"bench_learning: `{' '.join(args)}` failed (exit {done.returncode}); {log}:\n{tail}")


def _sft(config: str, seed: int, out: Path, limit: int | None, epochs: int, lr: float, overrides: list[str]) -> None:
    if (out / "config.json").is_file():
        return
    _run(["-m", "rl.sft", "--config", config, f"seed={seed}", f"run_dir={out.parent}", "--out", str(out),
          "--epochs", str(epochs), "--batch-size", "4", "--lr", str(lr), *(["--limit", str(limit)] if limit else []),
          *overrides],
         out.parent / "sft.log")


def _train(config: str, seed: int, model: Path, run_dir: Path, overrides: list[str]) -> list[dict]:
    from rl.run_dir import read_jsonl

    if not (run_dir / "report.png").is_file():  # written when a run ends
        resume = ["--resume"] if (run_dir / "metrics.jsonl").is_file() else []
        _run(["-m", "rl.train", "--config", config, f"seed={seed}", f"run_dir={run_dir}", f"model.name={model}",
              *overrides, *resume], run_dir.parent / f"{run_dir.name}.log")
    return read_jsonl(run_dir / "metrics.jsonl")


def _evaluate(model: Path, out: Path, overrides: list[str], *flags: str) -> dict:
    """rl.evaluate of a policy folder (held-out greedy unless `flags` say otherwise); its report.json."""
    if not (out / "report.json").is_file():
        resume = ["--resume"] if (out / "episodes.jsonl").is_file() else []
        _run(["-m", "rl.evaluate", "--model", str(model), *flags, "--out", str(out), *resume, *overrides],
             out.parent / f"{out.name}.log")
    return json.loads((out / "report.json").read_text())


def _heldout_greedy(model: Path, out: Path, overrides: list[str]) -> dict:
    """Held-out greedy success of a policy, per number of faults too, keyed as rl.train's eval/ metrics."""
    report = _evaluate(model, out, overrides, "--config-tasks", "heldout")
    return {"eval/success": report["pass_hat_k"]["1"], "eval/tasks": report["tasks"],
            **{f"eval/success/faults_{k}": v["success"] for k, v in report["by_faults"].items()}}


def _heldout_sampled(args, model: Path, out: Path, overrides: list[str]) -> dict | None:
    """tau2's pass^k on the held-out tasks, each sampled `args.heldout_trials` times at the rounds' temperature
    (k = 1 .. trials; a fixed seed, so every stage sees the same draw of sampler seeds); None when not asked for."""
    if not args.heldout_trials:
        return None
    return _evaluate(model, out, overrides, "--config-tasks", "heldout", "--trials", str(args.heldout_trials),
                     "--temperature", str(args.rft_temperature), "--seed", "7", "--concurrency", "64")["pass_hat_k"]


def _rft(args, seed: int, start: Path, overrides: list[str]) -> tuple[Path, list[dict]]:
    """`args.rft_rounds` rounds of rejection-sampling fine-tuning from `start`; (the last policy, per round: the
    training tasks' success as sampled, held-out success after the round: greedy, and sampled with
    --heldout-trials)."""
    root, model, samples, rounds = start.parent, start, [], []
    for r in range(1, args.rft_rounds + 1):
        sampler = [f"rollout.dtype={args.rft_dtype}", f"rollout.num_workers={args.rft_engines}",
                   f"env_pool.num_workers={args.rft_engines}"]
        sample = _evaluate(model, root / f"sample{r}", [*overrides, *sampler], "--config-tasks", "train", "--trials",
                           str(args.rft_trials), "--temperature", str(args.rft_temperature), "--seed",
                           str(seed * 100 + r), "--concurrency", str(64 * args.rft_engines))
        samples.append(str(root / f"sample{r}"))
        out = root / f"rft{r}"
        if not (out / "config.json").is_file():
            _run(["-m", "rl.sft", "--config", args.config, f"seed={seed}", f"run_dir={root / f'rft{r}_run'}",
                  f"model.name={model}", "--limit", str(args.sft_limit), "--from-rollouts", *samples, "--per-task",
                  str(args.rft_per_task), "--epochs", str(args.rft_epochs), "--lr", str(args.rft_lr), "--out",
                  str(out), *overrides], root / f"rft{r}.log")
        model = out
        rounds.append({"round": r, "train_success": sample["pass_hat_k"]["1"],
                       "heldout": _heldout_greedy(model, root / f"eval_rft{r}", overrides),
                       "heldout_sampled": _heldout_sampled(args, model, root / f"sampled_rft{r}", overrides)})
    return model, rounds


def _native_bf16() -> bool:
    """A CPU with bfloat16 instructions (AVX512-BF16 or AMX), where a bfloat16 engine samples faster than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _heldout(rows: list[dict], run_dir: Path) -> tuple[dict, dict]:
    """(eval metrics of the starting weights, of the last evaluated step)."""
    evals = [r for r in rows if "eval/success" in r]
    if not evals:
        raise SystemExit(f"bench_learning: {run_dir}/metrics.jsonl has no eval/success: set train.eval_tasks > 0")
    return evals[0], evals[-1]


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
                    help="vLLM engines sampling the training tasks, 64 episodes in flight each (a CPU engine runs "
                         "its model on one thread: one per core)")
    ap.add_argument("--rft-dtype", choices=ROLLOUT_DTYPES, default="bfloat16" if _native_bf16() else "auto",
                    help="the engine's dtype when sampling the training tasks (rollout.dtype; default: bfloat16 on "
                         "a CPU with bf16 instructions, 1.3-1.45x faster; only the samples' tokens and tau2's verdicts "
                         "are used, so the sampler need not match the learner's numerics)")
    ap.add_argument("--rft-epochs", type=int, default=3)
    ap.add_argument("--rft-lr", type=float, default=1e-3)
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
                                                                    "engines", "per_task", "epochs", "lr")},
                    "heldout_trials": args.heldout_trials,
                    "runs": {}}
    cfg = load_config(args.config, args.overrides)
    for seed in args.seeds:
        start = out / f"seed{seed}" / "sft"
        _sft(args.config, seed, start, args.sft_limit, args.sft_epochs, args.sft_lr, args.overrides)
        model, rft = _rft(args, seed, start, args.overrides) if args.rft_rounds else (start, [])
        if rft and not cfg.train.steps:  # no RL after the rounds: the last round's held-out evaluation is the end point
            rows, after = [], {**rft[-1]["heldout"], "step": 0}
        else:
            rows = _train(args.config, seed, model, out / f"seed{seed}" / "rl", args.overrides)
            before, after = _heldout(rows, out / f"seed{seed}" / "rl")
        before_sampled = None
        if rft:  # the SFT start, measured the way the rounds are
            before = _heldout_greedy(start, start.parent / "eval_sft", args.overrides)
            before_sampled = _heldout_sampled(args, start, start.parent / "sampled_sft", args.overrides)
        report["runs"][seed] = {"before": before, "after": after, "steps": after["step"], "rft": rft,
                                "before_sampled": before_sampled,
                                "train_success": [r.get("success_rate") for r in rows if r["step"] > 0],
                                "tool_calls": [r.get("episode/tool_calls") for r in rows if r["step"] > 0]}
    runs = report["runs"].values()
    report["before"] = _mean_std([r["before"]["eval/success"] for r in runs])
    report["after"] = _mean_std([r["after"]["eval/success"] for r in runs])
    report["gain"] = _mean_std([r["after"]["eval/success"] - r["before"]["eval/success"] for r in runs])
    tasks = int(next(iter(runs))["before"]["eval/tasks"])
    report["expert"] = _expert_success(args.config, args.overrides)
    if not args.no_ceiling:
        _sft(args.config, args.seeds[0], out / "ceiling" / "sft", None, args.sft_epochs, args.sft_lr, args.overrides)
        rows = _train(args.config, args.seeds[0], out / "ceiling" / "sft", out / "ceiling" / "rl",
                      [*args.overrides, "train.steps=0"])
        report["ceiling"] = _heldout(rows, out / "ceiling" / "rl")[0]["eval/success"]
    (out / "results.md").write_text("\n".join(_table(report, tasks)) + "\n")
    finish(report, str(out / "results.json"), lambda r: print("\n".join(_table(r, tasks))))
    where = f"{cfg.train.eval_split}, {tasks} tasks"
    for seed, run in report["runs"].items():  # rl.train's line, one per seed
        print(f"held-out success ({where}): before {run['before']['eval/success']:.2f} -> after "
              f"{run['after']['eval/success']:.2f}" + (f" (seed {seed})" if len(args.seeds) > 1 else ""))
    return 0


def _table(r: dict, tasks: int) -> list[str]:
    def ms(d: dict) -> str:
        return f"{d['mean']:.3f} ± {d['std']:.3f}"

    faults = sorted({k for run in r["runs"].values() for k in run["after"] if k.startswith("eval/success/faults_")},
                    key=lambda k: int(k.rsplit("_", 1)[1]))
    runs = list(r["runs"].values())
    rounds = min(len(run["rft"]) for run in runs)
    rft = (f", {rounds} round{'s' * (rounds > 1)} of rejection sampling ({r['rft']['trials']} samples per training "
           f"task at {r['rft']['temperature']}, up to {r['rft']['per_task']} successes per task)" if rounds else "")
    steps = runs[0]["steps"]
    rl = f"then RL ({steps} steps)" if steps or not rounds else "no RL after them"
    lines = [f"Held-out greedy success ({tasks} tasks), {len(runs)} seed{'s' * (len(runs) > 1)} ({r['config']} "
             f"{' '.join(r['overrides'])}), SFT on {r['sft_limit']} expert conversations{rft}, {rl}:", "",
             "| | held-out success | training tasks' success, sampled |", "|---|---|---|",
             f"| SFT start | {ms(r['before'])} | |"]
    for i in range(rounds):
        held = _mean_std([run["rft"][i]["heldout"]["eval/success"] for run in runs])
        sampled = _mean_std([run["rft"][i]["train_success"] for run in runs])
        lines.append(f"| after rejection-sampling round {i + 1} | {ms(held)} | {ms(sampled)} (before the round) |")
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
    lines += ["", "Per number of faults (mean over seeds):", "",
              "| faults | " + " | ".join(k.rsplit("_", 1)[1] for k in faults) + " |", "|---|" + "---|" * len(faults)]
    for when in ("before", "after"):
        vals = [statistics.mean(run[when].get(k, 0.0) for run in r["runs"].values()) for k in faults]
        lines.append(f"| {when} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
