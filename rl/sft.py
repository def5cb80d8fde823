"""SFT warm start on oracle trajectories, so a small policy starts RL with non-zero success.

    python -m rl.sft --config configs/laptop.yaml [key=value ...] [--epochs 2] [--out DIR]

The oracle plays each training task's gold actions through the real environment (envs/tau2_telecom/oracle.py);
each conversation is tokenised with the chat template, the loss covers the assistant turns only, and the
same DeepSpeed ZeRO-3 learner as RL trains on it (its policy loss with advantage 1 and the current policy as
the "old" one is exactly the negative log-likelihood gradient). The result is a HF folder for model.name.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from rl.config import Config, parse_cli
from rl.contracts import TrainBatch
from rl.runtime import init_ray


def encode_conversation(tokenizer, messages: list[dict], tools: list[dict] | None) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of a conversation; mask is 1 on each assistant turn's content + end-of-turn token.
    Built turn by turn the way a rollout assembles tokens (the template is prefix-stable), so SFT and RL
    see the same token layout."""
    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tools=tools, add_generation_prompt=gen, tokenize=False)

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ids, mask, done_text = [], [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = render(messages[:i], True)
        if not prefix.startswith(done_text):
            raise ValueError("chat template is not prefix-stable")
        chunk = encode(prefix[len(done_text):])
        turn = encode(m["content"]) + [tokenizer.eos_token_id]
        ids += chunk + turn
        mask += [0] * len(chunk) + [1] * len(turn)
        done_text = prefix + m["content"] + tokenizer.eos_token
    return ids, mask


def oracle_dataset(cfg: Config, tokenizer) -> list[tuple[list[int], list[int]]]:
    from envs.tau2_telecom.oracle import play_oracle
    from envs.tau2_telecom.session import SessionLimits, TelecomSession
    from envs.tau2_telecom.tau2_api import Task
    from envs.tau2_telecom.users import ScriptedUser
    from envs.tau2_telecom.world import get_world
    from rl.runtime import load_tasks

    world = get_world(cfg.env.policy)
    session = TelecomSession(world, SessionLimits(max_turns=100), user=ScriptedUser(), prompt=cfg.env.prompt)
    data = []
    for task in load_tasks(cfg).values():
        episode = play_oracle(session, Task.model_validate(task), cfg.env.mode)
        if session.evaluate().success:  # only demonstrations the evaluator confirms
            data.append(encode_conversation(tokenizer, episode.chat_messages(), episode.first.tools))
    return data


def run_sft(cfg: Config, epochs: int, batch_size: int, lr: float | None, out: Path, limit: int | None = None) -> dict:
    """Train `cfg.model.name` on oracle conversations; writes a HF folder to `out`. Needs Ray initialised."""
    from transformers import AutoTokenizer

    from actors.learner import LearnerGroup, LearnerSettings
    from rl.models import resolve_model

    base = resolve_model(cfg.model.name)
    tokenizer = AutoTokenizer.from_pretrained(base)
    data = oracle_dataset(cfg, tokenizer)[:limit]
    too_long = sum(len(ids) > cfg.rollout.max_model_len for ids, _ in data)
    data = [d for d in data if len(d[0]) <= cfg.rollout.max_model_len]
    print(f"sft: {len(data)} oracle conversations ({too_long} longer than rollout.max_model_len dropped), "
          f"mean {sum(len(i) for i, _ in data) / max(1, len(data)):.0f} tokens", file=sys.stderr)
    if not data:
        raise ValueError("sft: no oracle conversation fits rollout.max_model_len; try env.prompt=compact")
    # The run's learner settings with SFT's own: no KL, no clipping (plain likelihood gradient), token mean.
    settings = replace(LearnerSettings.from_config(cfg, str(base)), lr=lr or cfg.learner.lr * 10, kl_coef=0.0,
                       clip_eps=1e9, clip_eps_high=None, aggregation="token_mean")
    learner = LearnerGroup(settings, num_ranks=cfg.learner.num_ranks)
    rng = random.Random(cfg.seed)
    nll_curve = []
    t0 = time.perf_counter()
    try:
        steps = epochs * ((len(data) + batch_size - 1) // batch_size)
        bar = tqdm(total=steps, desc="sft", unit="step", file=sys.stderr)
        for _ in range(epochs):
            rng.shuffle(data)
            for i in range(0, len(data), batch_size):
                chunk = data[i: i + batch_size]
                batch = TrainBatch(input_ids=[c[0] for c in chunk], loss_mask=[c[1] for c in chunk])
                batch.old_logprobs = learner.logprobs(batch)  # ratio 1: the PPO gradient is the NLL gradient
                batch.advantages = [[1.0] * len(c[0]) for c in chunk]
                m = learner.train_step(batch)
                nll = -sum(lp * mk for lps, c in zip(batch.old_logprobs, chunk) for lp, mk in zip(lps, c[1]))
                nll_curve.append(nll / max(1, sum(sum(c[1]) for c in chunk)))
                bar.set_postfix(nll_per_token=f"{nll_curve[-1]:.3f}", grad_norm=f"{m.get('grad_norm', 0):.2f}")
                bar.update(1)
        bar.close()
        learner.save_hf(str(out))
    finally:
        learner.shutdown()
    return {"path": str(out), "conversations": len(data), "steps": len(nll_curve), "nll_first": nll_curve[0],
            "nll_last": nll_curve[-1], "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    import ray

    def flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs", type=int, default=2)
        p.add_argument("--batch-size", type=int, default=8, help="sequences per optimizer step")
        p.add_argument("--lr", type=float, default=None, help="default: learner.lr x 10")
        p.add_argument("--out", default=None, help="HF folder to write (default: <run_dir>/sft_model)")
        p.add_argument("--limit", type=int, default=None, help="use only the first N oracle conversations")

    cfg, args = parse_cli(argv, description=__doc__, add_arguments=flags)
    out = Path(args.out or Path(cfg.run_dir) / "sft_model")
    init_ray(cfg, cfg.learner.num_ranks)
    try:
        result = run_sft(cfg, args.epochs, args.batch_size, args.lr, out, args.limit)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    print(f"sft: {result['steps']} steps, NLL/token {result['nll_first']:.2f} -> {result['nll_last']:.2f}, "
          f"{result['seconds']:.0f}s; wrote {out} (train on it with model.name={out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
