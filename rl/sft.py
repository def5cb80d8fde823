"""SFT warm start on demonstrations, so a small policy starts RL with non-zero success.

    python -m rl.sft --config configs/laptop.yaml [key=value ...] [--teacher expert|oracle] [--limit N]
                     [--from-rollouts DIR ...] [--epochs 2] [--out DIR]

Demonstrations come from the training tasks only (env.split / env.tasks_file, less train.eval_split when
train.eval_tasks > 0, exactly as rl.train holds it out), and only episodes tau2's evaluator passes are kept:
  expert   (default) the diagnosing expert (envs/tau2_telecom/expert.py) plays each task through the real
           environment: it reads the phone's and the CRM's answers and fixes what it finds - what a policy can learn
  oracle   replays each task's gold actions blind (a policy learns to guess fixes from these)
  --from-rollouts  rejection sampling: a policy's own successful episodes from runs' trajectories.jsonl or from
           `rl.evaluate --model ... --temperature 0.7 --trials k` folders on the training tasks (SFT -> RFT -> RL);
           with --teacher too, both sets are used
`--limit N` keeps N of the teacher's demonstrations (of the rollouts' when there is no teacher), drawn at random
(seeded) from those that fit rollout.max_model_len, so a warm start's few demonstrations stay the same when its own
successes are added. Each conversation is tokenised with the chat template, the loss covers the assistant turns
only, and the same DeepSpeed ZeRO-3 learner as RL trains on it (the mean NLL per token, the term RL's
algorithm.demo_coef adds), with a linear warm-up over 5 % of the steps and a linear decay to 0.
The result is a HF folder for model.name.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

from rl.config import Config, parse_cli, redacted_yaml
from rl.contracts import TrainBatch
from rl.demonstrations import TEACHERS, demonstration_rows
from rl.runtime import init_ray


def run_sft(cfg: Config, epochs: int, batch_size: int, lr: float | None, out: Path, limit: int | None = None,
            teacher: str | None = "expert", rollouts: list[str] | None = None, per_task: int | None = None) -> dict:
    """Train `cfg.model.name` on demonstrations (a teacher's, a policy's own successes, or both); writes a HF folder
    to `out`. Needs Ray initialised."""
    from transformers import AutoTokenizer

    from actors.learner import LearnerGroup
    from rl.models import MODEL_CONFIG_FILE, resolve_model

    base = resolve_model(cfg.model.name, asdict(cfg.model.tiny))
    data = demonstration_rows(cfg, AutoTokenizer.from_pretrained(base), teacher, rollouts, limit, per_task)
    steps = sft_steps(len(data), epochs, batch_size)
    learner = LearnerGroup(sft_settings(cfg, str(base), lr, steps), num_ranks=cfg.learner.num_ranks)
    t0 = time.perf_counter()
    try:
        nll_curve = fit(learner, data, epochs, batch_size, random.Random(cfg.seed))
        learner.save_hf(str(out), {MODEL_CONFIG_FILE: redacted_yaml(cfg)})
    finally:
        learner.shutdown()
    return {"path": str(out), "conversations": len(data), "steps": len(nll_curve), "nll_first": nll_curve[0],
            "nll_last": nll_curve[-1], "seconds": time.perf_counter() - t0}


def sft_steps(rows: int, epochs: int, batch_size: int) -> int:
    return epochs * ((rows + batch_size - 1) // batch_size)


def sft_settings(cfg: Config, model_path: str, lr: float | None, steps: int):
    """The learner for fine-tuning on demonstrations: their NLL alone (no KL, no policy loss), untempered, peak lr
    `lr` (default learner.lr x 10) with a warm-up then a linear decay to 0 over `steps`: a constant lr high enough to
    fit a small model in few steps leaves it noisy."""
    from actors.learner import LearnerSettings

    return replace(LearnerSettings.from_config(cfg, model_path), lr=lr or cfg.learner.lr * 10, kl_coef=0.0,
                   demo_coef=1.0, lr_schedule_steps=steps, temperature=1.0)


def fit(learner, data: list[tuple[list[int], list[int]]], epochs: int, batch_size: int, rng: random.Random,
        desc: str = "sft") -> list[float]:
    """`epochs` passes over (token ids, loss mask) rows in shuffled batches, one optimizer step each; the NLL per
    token of every step's batch (before its step, as the forward saw it)."""
    nll_curve = []
    bar = tqdm(total=sft_steps(len(data), epochs, batch_size), desc=desc, unit="step", file=sys.stderr)
    for _ in range(epochs):
        rng.shuffle(data)
        for i in range(0, len(data), batch_size):
            chunk = data[i: i + batch_size]
            m = learner.train_step(None, demo=TrainBatch(input_ids=[c[0] for c in chunk],
                                                         loss_mask=[c[1] for c in chunk]))
            nll_curve.append(m["demo_nll"])
            bar.set_postfix(nll_per_token=f"{nll_curve[-1]:.3f}", grad_norm=f"{m.get('grad_norm', 0):.2f}")
            bar.update(1)
    bar.close()
    return nll_curve


def main(argv: list[str] | None = None) -> int:
    import ray

    def flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs", type=int, default=2)
        p.add_argument("--batch-size", type=int, default=8, help="sequences per optimizer step")
        p.add_argument("--lr", type=float, default=None, help="default: learner.lr x 10")
        p.add_argument("--out", default=None, help="HF folder to write (default: <run_dir>/sft_model)")
        p.add_argument("--limit", type=int, default=None,
                       help="use N of the teacher's demonstrations (of the rollouts' without one), drawn at random "
                            "(seeded)")
        p.add_argument("--teacher", choices=(*TEACHERS, "none"), default="expert",
                       help="who demonstrates on the training tasks (none: only --from-rollouts)")
        p.add_argument("--from-rollouts", nargs="+", default=None, metavar="DIR",
                       help="add a policy's own successful episodes: rl.train runs (trajectories.jsonl) or "
                            "rl.evaluate --model folders (episodes.jsonl)")
        p.add_argument("--per-task", type=int, default=None, metavar="N",
                       help="--from-rollouts: at most N distinct successes per task")

    cfg, args = parse_cli(argv, description=__doc__, add_arguments=flags)
    if any(n is not None and n < 1 for n in (args.limit, args.per_task)):
        print("sft: --limit and --per-task must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out or Path(cfg.run_dir) / "sft_model")
    init_ray(cfg, cfg.learner.num_ranks * cfg.learner.num_cpus)
    try:
        teacher = None if args.teacher == "none" else args.teacher
        result = run_sft(cfg, args.epochs, args.batch_size, args.lr, out, args.limit, teacher, args.from_rollouts,
                         args.per_task)
    except ValueError as e:
        print(f"sft: {e}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    print(f"sft: {result['steps']} steps, NLL/token {result['nll_first']:.2f} -> {result['nll_last']:.2f}, "
          f"{result['seconds']:.0f}s; wrote {out} (train on it with model.name={out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
