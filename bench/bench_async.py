"""Overlapped rollout and training (train.async_steps) against the synchronous loop, side by side in one run.

    python -m bench.bench_async [--config configs/test_tiny.yaml] [--steps 3] [--rounds 2]
                                [--out bench_results/async.json] [key=value ...]

One rl.train Trainer (the real driver and actors) runs blocks of `--steps` consecutive steps, alternating the mode
per block (sync, async, async, sync, ...) so that machine noise and the policy's drift hit both alike. In an async
block every step but the last launches the next step's episodes before it trains, so a block holds steps - 1
overlapped rollouts, as a run of that length would. Read: seconds per step (the block's wall time / steps), async /
sync; the step's phases (time/generate, time/train: in async mode generation shows only where the driver waited for
it); the episodes' policy lag. On a machine where the learner ranks and the engine share the same cores the two
phases compete, so overlap gains less than the rollout's share of the step.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import ray

from bench import finish

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("time/generate", "time/env", "time/reward", "time/train", "time/sync")


def run_block(trainer, async_steps: int, steps: int) -> dict:
    """`steps` training steps in one mode; the run's own step count is moved so the last one launches nothing."""
    trainer.cfg.train.async_steps = async_steps
    trainer.cfg.train.steps = trainer.step + steps
    t0, rows = time.perf_counter(), []
    while len(rows) < steps:
        m = trainer.train_step()
        if m is not None:
            rows.append(m)
    wall = time.perf_counter() - t0
    return {"async_steps": async_steps, "step_s": wall / steps,
            "phases": {k: statistics.mean(r[k] for r in rows) for k in PHASES},
            "policy_lag": max(r["rollout/policy_lag"] for r in rows), "episodes": sum(r["episodes"] for r in rows)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/test_tiny.yaml"))
    ap.add_argument("--steps", type=int, default=3, help="steps per block")
    ap.add_argument("--rounds", type=int, default=2, help="blocks per mode")
    ap.add_argument("--out", default="bench_results/async.json")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    from rl.config import load_config
    from rl.train import Trainer

    tmp = tempfile.mkdtemp(prefix="bench_async_")
    # The held-out evaluation is not part of a step; checkpoints are written, as in a run.
    # A random model's episodes of one task tie on reward and the driver skips a step with no signal; partial credit
    # and a small KL term keep every step a real train + sync step (bench_pipeline does the same).
    signal = ["reward.env_assertion_weight=0.5", "reward.action_weight=0.5", "algorithm.kl_coef=0.01"]
    cfg = load_config(args.config, [*signal, *args.overrides, f"run_dir={tmp}/run", "train.eval_tasks=0",
                                    f"train.steps={2 * args.steps * args.rounds + 1}"])
    report = {"config": args.config, "overrides": args.overrides, "steps_per_block": args.steps,
              "rounds": args.rounds, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    trainer = Trainer(cfg)
    try:
        run_block(trainer, 0, 1)  # warm-up: first-call costs (the learner's first step is 2-3x a later one)
        blocks = []
        for r in range(args.rounds):
            for mode in ((0, 1) if r % 2 == 0 else (1, 0)):
                blocks.append(run_block(trainer, mode, args.steps))
    finally:
        trainer.close()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    for mode, name in ((0, "sync"), (1, "async")):
        mine = [b for b in blocks if b["async_steps"] == mode]
        report[name] = {"step_s": statistics.median(b["step_s"] for b in mine),
                        "phases": {k: statistics.median(b["phases"][k] for b in mine) for k in PHASES},
                        "policy_lag": max(b["policy_lag"] for b in mine)}
    report["blocks"] = blocks
    report["ratio"] = report["async"]["step_s"] / report["sync"]["step_s"]
    report["load_avg_end"] = os.getloadavg()
    return finish(report, args.out, _print)


def _print(r: dict) -> None:
    print(f"\n== async steps: {Path(r['config']).name} {' '.join(r['overrides'])}, blocks of {r['steps_per_block']} "
          f"steps, {r['rounds']} per mode, {r['cpus']} CPUs (load avg at start {r['load_avg_start'][0]:.1f}) ==")
    print(f"{'':8} {'s/step':>8} " + " ".join(f"{k[5:]:>9}" for k in PHASES) + "  policy lag")
    for name in ("sync", "async"):
        a = r[name]
        print(f"{name:8} {a['step_s']:8.1f} " + " ".join(f"{a['phases'][k]:9.1f}" for k in PHASES)
              + f"  {a['policy_lag']}")
    print(f"async / sync seconds per step: {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
