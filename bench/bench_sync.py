"""Weight sync transports (sync.transport), side by side on one run's learner and engines.

    python -m bench.bench_sync [--config configs/test_tiny.yaml] [--rounds 3] [--out bench_results/sync.json]
                               [key=value ...]            # e.g. model.name=smollm2-135m

One rl.train Trainer (the real learner ranks and rollout engines); per round, one sync through Ray's object store
and one broadcast over the weight group (gloo on CPU, NCCL on GPU), in alternating order; after each, the engine
scores a fixed sequence and the learner does too (they must agree: the sync delivered every tensor). Read: seconds
per sync, median over rounds, collective / object store.
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
TRANSPORTS = ("object_store", "collective")


def timed_sync(trainer, transport: str, probe: list[int]) -> dict:
    from rl.contracts import TrainBatch

    trainer.cfg.sync.transport = transport
    t0 = time.perf_counter()
    out = trainer.sync_weights()
    seconds = time.perf_counter() - t0
    ours = trainer.learner.logprobs(TrainBatch(input_ids=[probe], loss_mask=[[1] * len(probe)]))[0]
    theirs = ray.get(trainer.rollout_workers[0].sequence_logprobs.remote(probe))
    return {"transport": transport, "seconds": seconds, "bytes": out.get("bytes", 0),
            "max_logprob_gap": max(abs(a - b) for a, b in zip(ours[1:], theirs[1:]))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/test_tiny.yaml"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench_results/sync.json")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    from rl.config import load_config
    from rl.train import Trainer

    tmp = tempfile.mkdtemp(prefix="bench_sync_")
    cfg = load_config(args.config, [*args.overrides, f"run_dir={tmp}/run", "train.eval_tasks=0"])
    report = {"config": args.config, "overrides": args.overrides, "model": cfg.model.name, "rounds": args.rounds,
              "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    trainer = Trainer(cfg)
    try:
        probe = trainer.rollout(sorted(trainer.tasks)[:1], 1)[0].token_ids[:256]
        for transport in TRANSPORTS:  # warm-up: the group forms on the first collective sync
            timed_sync(trainer, transport, probe)
        rows = [timed_sync(trainer, t, probe) for r in range(args.rounds)
                for t in (TRANSPORTS if r % 2 == 0 else TRANSPORTS[::-1])]
    finally:
        trainer.close()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    for t in TRANSPORTS:
        mine = [r for r in rows if r["transport"] == t]
        report[t] = {"seconds": statistics.median(r["seconds"] for r in mine), "bytes": mine[0]["bytes"],
                     "max_logprob_gap": max(r["max_logprob_gap"] for r in mine)}
    report["ratio"] = report["collective"]["seconds"] / report["object_store"]["seconds"]
    report["rows"] = rows
    return finish(report, args.out, _print)


def _print(r: dict) -> None:
    print(f"\n== weight sync: {r['model']}, {r['rounds']} rounds, {r['cpus']} CPUs "
          f"(load avg at start {r['load_avg_start'][0]:.1f}) ==")
    for t in TRANSPORTS:
        a = r[t]
        print(f"{t:13} {a['seconds']:7.2f} s  {a['bytes'] / 1e6:8.1f} MB  engine vs learner logprobs: max gap "
              f"{a['max_logprob_gap']:.1e}")
    print(f"collective / object store: {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
