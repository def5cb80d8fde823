"""Bradley-Terry reward model training on preference pairs, on the policy learner's DeepSpeed ZeRO-3 ranks.

    python -m rl.rm.train --config configs/rm_tiny.yaml rm.train_file=pairs/train.jsonl [rm.eval_file=...]

Pairs are OpenRLHF-layout JSONL (rl/rm/pairs makes them from tau2's verifier and from TeleQnA). Each side is
the chat template over prompt + side, cut from the start to rm.max_len tokens (rl/rm/model.py). The run
directory gets the config snapshot, metrics.jsonl + TensorBoard (loss, accuracy, reward margin per step), the
trained RM (an HF sequence-classification folder + telerl_rm.json with its score statistics) and, with
rm.eval_file, the RewardBench-style report of rl.rm.eval on held-out pairs.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

from tqdm import tqdm

from rl.config import Config, ConfigError, parse_cli
from rl.run_dir import RunDir

# Conversations scored after training for the normalisation statistics (mean/std of the RM's scores).
_STATS_SAMPLE = 256


def encode_pairs(tokenizer, pairs, max_len: int) -> list[tuple[list[int], list[int], float]]:
    from rl.rm.model import conversation_ids

    return [(conversation_ids(tokenizer, p.prompt + p.chosen, max_len),
             conversation_ids(tokenizer, p.prompt + p.rejected, max_len),
             float(p.margin or 0.0)) for p in pairs]


def train_reward_model(cfg: Config) -> Path:
    """Trains, saves and (with rm.eval_file) evaluates; returns the RM folder."""
    import torch
    from transformers import AutoTokenizer

    from actors.rm_learner import RewardModelGroup, RewardModelSettings
    from rl.models import resolve_model
    from rl.rm.model import RM_META, write_meta
    from rl.rm.pairs.format import read_pairs
    from rl.runtime import cluster_has_gpus, init_ray

    rm = cfg.rm
    if not rm.train_file:
        raise ConfigError("config key 'rm.train_file': got '', expected a pairs JSONL file (python -m rl.rm.pairs)")
    pairs = read_pairs(rm.train_file)
    if not pairs:
        raise ConfigError(f"config key 'rm.train_file': {rm.train_file} holds no pairs")
    run = RunDir(cfg)
    out = Path(rm.out or Path(cfg.run_dir) / "rm")
    base = str(resolve_model(rm.base_model))
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = encode_pairs(tokenizer, pairs, rm.max_len)
    rng = random.Random(cfg.seed)

    init_ray(cfg, 0 if torch.cuda.is_available() else rm.num_ranks)
    use_gpu = cluster_has_gpus()
    group = RewardModelGroup(RewardModelSettings.from_rm_config(rm, base, cfg.seed), num_ranks=rm.num_ranks,
                             use_gpu=use_gpu)
    try:
        steps_per_epoch = -(-len(encoded) // rm.batch_size)
        bar = tqdm(total=rm.epochs * steps_per_epoch, desc="rm_train", unit="step", file=sys.stderr)
        step = 0
        for epoch in range(rm.epochs):
            order = list(range(len(encoded)))
            rng.shuffle(order)
            for start in range(0, len(order), rm.batch_size):
                batch = [encoded[i] for i in order[start:start + rm.batch_size]]
                m = group.train_step(batch)
                step += 1
                run.log_metrics(step, {"epoch": epoch, **{f"rm/{k}": v for k, v in m.items()}})
                bar.update()
                bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}")
        bar.close()
        sample = rng.sample(encoded, min(len(encoded), _STATS_SAMPLE // 2))
        scores = group.scores([side for c, r, _ in sample for side in (c, r)])
        group.save_hf(str(out), {RM_META: write_meta(rm.max_len, scores, rm.base_model)})
    finally:
        group.shutdown()
        run.close()
    print(f"reward model: {out}", file=sys.stderr)
    if rm.eval_file:
        from rl.rm import eval as rm_eval

        rm_eval.main(["--pairs", rm.eval_file, "--rm", str(out), "--out", str(Path(cfg.run_dir) / "rm_eval")])
    return out


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_cli(argv, description=__doc__)
    try:
        train_reward_model(cfg)
    except ConfigError as e:
        print(f"rl.rm.train: config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
