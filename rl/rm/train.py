"""Bradley-Terry reward model training on preference pairs, on the policy learner's DeepSpeed ZeRO-3 ranks.

    python -m rl.rm.train --config configs/rm_tiny.yaml rm.train_file=pairs/train.jsonl [rm.eval_file=...] [--resume]

Pairs are OpenRLHF-layout JSONL (rl/rm/pairs makes them from tau2's verifier and from TeleQnA). Each side is
the chat template over prompt + side, cut from the start to rm.max_len tokens (rl/rm/model.py). The run
directory gets the config snapshot, metrics.jsonl + TensorBoard (loss, accuracy, reward margin per step), the
trained RM (an HF sequence-classification folder + telerl_rm.json with its score statistics) and, with
rm.eval_file, the RewardBench-style report of rl.rm.eval on held-out pairs. With rm.checkpoint_every, the ranks'
shards (weights and optimizer) are saved every that many steps; --resume continues an interrupted run from the newest
one, on the same batches in the same order as a run that was never interrupted.
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


def train_reward_model(cfg: Config, resume: bool = False) -> Path:
    """Trains, saves and (with rm.eval_file) evaluates; returns the RM folder. resume: continue the run in
    cfg.run_dir from its newest checkpoint (from the start when it has none)."""
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
    base = str(resolve_model(rm.base_model))
    if rm.train_layers is not None:  # checked here, before Ray and the ranks start
        from transformers import AutoConfig

        layers = AutoConfig.from_pretrained(base).num_hidden_layers
        if rm.train_layers > layers:
            raise ConfigError(f"config key 'rm.train_layers': got {rm.train_layers}, {rm.base_model} has {layers} "
                              "layers")
    run = RunDir(cfg, resume=resume)  # on resume, the metrics of steps after the checkpoint are dropped
    out = Path(rm.out or Path(cfg.run_dir) / "rm")
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = encode_pairs(tokenizer, pairs, rm.max_len)
    rng = random.Random(cfg.seed)

    init_ray(cfg, 0 if torch.cuda.is_available() else rm.num_ranks)
    use_gpu = cluster_has_gpus()
    group = RewardModelGroup(RewardModelSettings.from_rm_config(rm, base, cfg.seed), num_ranks=rm.num_ranks,
                             use_gpu=use_gpu)
    try:
        done = 0
        found = run.latest_checkpoint() if resume else None
        if found is not None:
            done = group.load_checkpoint(str(found[1]))["step"]
            print(f"resumed from {found[1]} (step {done})", file=sys.stderr)
        elif resume:
            print(f"--resume: no checkpoint in {run.path}/checkpoints; starting from step 0", file=sys.stderr)
        total = rm.epochs * -(-len(encoded) // rm.batch_size)
        bar = tqdm(total=total, initial=done, desc="rm_train", unit="step", file=sys.stderr)
        step = 0
        for epoch in range(rm.epochs):
            order = list(range(len(encoded)))
            rng.shuffle(order)  # every epoch's shuffle is drawn, resumed or not: the batches stay those of one run
            for start in range(0, len(order), rm.batch_size):
                step += 1
                if step <= done:
                    continue
                batch = [encoded[i] for i in order[start:start + rm.batch_size]]
                m = group.train_step(batch)
                run.log_metrics(step, {"epoch": epoch, **{f"rm/{k}": v for k, v in m.items()}})
                bar.update()
                bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}")
                if rm.checkpoint_every and step % rm.checkpoint_every == 0 and step < total:
                    group.save_checkpoint(str(run.begin_checkpoint(step)), {"step": step})
                    run.commit_checkpoint(step, rm.keep_checkpoints)
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
    def flags(parser):
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in run_dir from its newest checkpoint (rm.checkpoint_every)")

    cfg, args = parse_cli(argv, description=__doc__, add_arguments=flags)
    try:
        train_reward_model(cfg, resume=args.resume)
    except ConfigError as e:
        print(f"rl.rm.train: config error: {e}", file=sys.stderr)
        return 2
    except FileExistsError as e:  # run_dir holds a run and --resume was not given
        print(f"rl.rm.train: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
