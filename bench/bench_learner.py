"""Learner benchmark: shared-prefix group training (learner.shared_prefix) against the full sequences, side by side.

    python -m bench.bench_learner [--model smollm2-135m] [--prefix 256] [--continuation 64] [--group 8]
                                  [--ranks 1] [--cpus 1] [--rounds 2] [--out bench_results/learner.json]

Two ZeRO-3 LearnerGroups (the production learner) of the same model, one with learner.shared_prefix on, one off,
take the same batches: two GRPO groups of `--group` episodes, each group a shared prompt of `--prefix` tokens then
continuations of about `--continuation` tokens (lengths spread +-25 %), the loss on the continuations; the laptop
config's proportion (a 3.5k-token prompt in 4.5k-token episodes) at a size 2 cores get through in minutes. A group is
one micro batch (micro_batch_size = group), as rl.train places it when micro_batch_size >= group_size; one rank per
arm by default, so that both arms' activations fit in 24 GB. Per round and arm: the old-logprob pass
(LearnerGroup.logprobs) and one optimizer step (train_step), with the step's phases as the rank timed them
(policy forward + loss, reference forward, backward, DeepSpeed's step).
Arms alternate (A B A B ...) so machine noise hits both; medians over rounds; the ratio shared / full is what to read.
Peak resident memory of the ranks is reported per arm.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import ray

from actors.learner import PHASES, LearnerGroup, LearnerSettings
from bench import finish
from rl.contracts import TrainBatch
from rl.models import resolve_model
from rl.runtime import init_ray


def grpo_batch(groups: int, size: int, prefix: int, continuation: int, vocab: int, seed: int) -> TrainBatch:
    rng = random.Random(seed)
    batch = TrainBatch(input_ids=[], loss_mask=[], advantages=[])
    for _ in range(groups):
        prompt = [rng.randrange(1, vocab) for _ in range(prefix)]
        for _ in range(size):
            n = rng.randint(int(continuation * 0.75), int(continuation * 1.25))
            adv = rng.gauss(0, 1)
            batch.input_ids.append(prompt + [rng.randrange(1, vocab) for _ in range(n)])
            batch.loss_mask.append([0] * prefix + [1] * n)
            batch.advantages.append([0.0] * prefix + [adv] * n)
    return batch


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="tiny | smollm2-135m | a local HF folder")
    ap.add_argument("--prefix", type=int, default=256, help="shared prompt tokens per group")
    ap.add_argument("--continuation", type=int, default=64, help="mean tokens after the prompt per episode")
    ap.add_argument("--group", type=int, default=8, help="episodes per group (= micro_batch_size)")
    ap.add_argument("--ranks", type=int, default=1, help="ZeRO-3 ranks per arm")
    ap.add_argument("--cpus", type=int, default=1, help="CPUs (torch threads) per rank: learner.num_cpus")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="bench_results/learner.json")
    args = ap.parse_args(argv)

    from transformers import AutoConfig

    path = str(resolve_model(args.model))
    vocab = AutoConfig.from_pretrained(path).vocab_size
    # logical CPUs for both arms' ranks at once (the arms take turns, never run together)
    init_ray(None, 2 * args.ranks * args.cpus, log_to_driver=False)
    arms = {}
    try:
        for name, shared in (("full", False), ("shared", True)):
            settings = LearnerSettings(model_path=path, lr=1e-6, micro_batch_size=args.group, shared_prefix=shared,
                                       num_cpus=args.cpus)
            arms[name] = LearnerGroup(settings, num_ranks=args.ranks, timeout_s=3600)
        times = {name: {"logprobs": [], "train_step": [], **{k: [] for k in PHASES}} for name in arms}
        for r in range(args.rounds + 1):  # round 0 warms up (first-call costs), not counted
            batch = grpo_batch(2, args.group, args.prefix, args.continuation, vocab, seed=r)
            for name, group in arms.items():
                t_lp, old = timed(group.logprobs, batch)
                b = TrainBatch(batch.input_ids, batch.loss_mask, old, batch.advantages)
                t_step, m = timed(group.train_step, b)
                if r:
                    times[name]["logprobs"].append(t_lp)
                    times[name]["train_step"].append(t_step)
                    for k in PHASES:
                        times[name][k].append(m[k])
                print(f"round {r} {name}: logprobs {t_lp:.1f} s, train_step {t_step:.1f} s ("
                      + ", ".join(f"{k} {m[k]:.1f}" for k in PHASES) + ")", flush=True)
        rss = {name: max(s["peak_rss_mb"] for s in group.stats()) for name, group in arms.items()}
    finally:
        for group in arms.values():
            group.shutdown()
        ray.shutdown()

    med = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    report = {"model": args.model, "prefix": args.prefix, "continuation": args.continuation, "group": args.group,
              "ranks": args.ranks, "cpus_per_rank": args.cpus, "rounds": args.rounds, "seconds": med,
              "rank_rss_mb": rss,
              "ratio": {k: med["shared"][k] / med["full"][k] for k in ("logprobs", "train_step")}}
    return finish(report, args.out, show)


def show(r: dict) -> None:
    print(f"\n{r['model']}: 2 groups x {r['group']} episodes, {r['prefix']}-token shared prompt, "
          f"~{r['continuation']} tokens after it, {r['ranks']} rank(s) per arm, {r.get('cpus_per_rank', 1)} CPU(s) "
          f"each; medians of {r['rounds']} rounds")
    print("| pass | full sequences | shared prefix | ratio |\n| --- | --- | --- | --- |")
    for k in ("logprobs", "train_step"):
        print(f"| {k} | {r['seconds']['full'][k]:.1f} s | {r['seconds']['shared'][k]:.1f} s | {r['ratio'][k]:.2f} |")
    for k in PHASES:  # inside train_step, as the rank timed it
        full, shared = r["seconds"]["full"][k], r["seconds"]["shared"][k]
        if max(full, shared) < 0.05:  # a phase that does not run here (no reference model without a KL term)
            continue
        print(f"| train_step: {k[:-2]} | {full:.1f} s | {shared:.1f} s | {shared / max(full, 1e-9):.2f} |")
    print(f"| peak rank RSS | {r['rank_rss_mb']['full']:.0f} MB | {r['rank_rss_mb']['shared']:.0f} MB | |")


if __name__ == "__main__":
    main()
