"""SFT warm start on demonstrations, so a small policy starts RL with non-zero success.

    python -m rl.sft --config configs/laptop.yaml [key=value ...] [--teacher expert|oracle] [--limit N]
                     [--from-rollouts RUN_DIR ...] [--epochs 2] [--out DIR]

Demonstrations come from the training tasks only (env.split / env.tasks_file, less train.eval_split when
train.eval_tasks > 0, exactly as rl.train holds it out), and only episodes tau2's evaluator passes are kept:
  expert   (default) the diagnosing expert (envs/tau2_telecom/expert.py) plays each task through the real
           environment: it reads the phone's and the CRM's answers and fixes what it finds - what a policy can learn
  oracle   replays each task's gold actions blind (a policy learns to guess fixes from these)
  --from-rollouts  rejection sampling: a policy's own successful episodes from runs' trajectories.jsonl (SFT -> RFT
           -> RL); with --teacher too, both sets are used
`--limit N` keeps N demonstrations drawn at random (seeded) from those that fit rollout.max_model_len. Each
conversation is tokenised with the chat template, the loss covers the assistant turns only, and the same DeepSpeed
ZeRO-3 learner as RL trains on it (its policy loss with advantage 1 and the current policy as the "old" one is
exactly the negative log-likelihood gradient), with a linear warm-up over 5 % of the steps and a linear decay to 0.
The result is a HF folder for model.name.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from rl.config import Config, parse_cli, redacted_yaml
from rl.contracts import TrainBatch
from rl.runtime import init_ray, split_tasks


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


TEACHERS = ("expert", "oracle")


@dataclass
class Demonstrations:
    """Conversations to imitate, each with the tool schemas its prompt was rendered with."""

    conversations: list[tuple[list[dict], list[dict]]] = field(default_factory=list)  # (messages, tools)
    considered: int = 0  # episodes looked at
    failed: int = 0  # played or logged episodes that tau2's evaluator did not pass (left out)

    def add(self, other: Demonstrations) -> None:
        self.conversations += other.conversations
        self.considered += other.considered
        self.failed += other.failed


def teacher_demonstrations(cfg: Config, teacher: str) -> Demonstrations:
    """`teacher` plays every training task once through the real environment; the passed episodes are kept."""
    from envs.tau2_telecom.expert import play_expert
    from envs.tau2_telecom.oracle import play_oracle
    from envs.tau2_telecom.session import SessionLimits, TelecomSession
    from envs.tau2_telecom.tau2_api import Task
    from envs.tau2_telecom.users import ScriptedUser
    from envs.tau2_telecom.world import get_world

    if teacher not in TEACHERS:
        raise ValueError(f"sft: unknown teacher {teacher!r}; expected one of {', '.join(TEACHERS)}")
    play = play_expert if teacher == "expert" else play_oracle
    world = get_world(cfg.env.policy)
    session = TelecomSession(world, SessionLimits(max_turns=100), user=ScriptedUser(), prompt=cfg.env.prompt)
    out = Demonstrations()
    for task in split_tasks(cfg).train.values():
        episode = play(session, Task.model_validate(task), cfg.env.mode)
        out.considered += 1
        if session.evaluate().success:  # only demonstrations the evaluator confirms
            out.conversations.append((episode.chat_messages(), episode.first.tools))
        else:
            out.failed += 1
    return out


def rollout_demonstrations(cfg: Config, run_dirs: list[str]) -> Demonstrations:
    """A policy's own successful episodes (tau2's verdict, components.success) on the training tasks, from runs'
    trajectories.jsonl; each distinct conversation once."""
    from envs.tau2_telecom.world import get_world
    from rl.contracts import EpisodeRecord
    from rl.run_dir import read_jsonl

    train_ids = set(split_tasks(cfg).train)
    tools = get_world(cfg.env.policy).prompt_tools(cfg.env.mode, cfg.env.prompt)
    out, seen = Demonstrations(), set()
    for run_dir in run_dirs:
        path = Path(run_dir) / "trajectories.jsonl" if Path(run_dir).is_dir() else Path(run_dir)
        if not path.is_file():
            raise ValueError(f"sft: --from-rollouts {run_dir}: no trajectories.jsonl there")
        for row in read_jsonl(path):
            record = EpisodeRecord.from_row(row)
            if record.task_id not in train_ids:
                continue  # held-out tasks (e.g. a run's evaluation episodes) never become training data
            out.considered += 1
            key = json.dumps(record.messages, sort_keys=True)
            if record.components.get("success", 0.0) < 1.0 - 1e-6:
                out.failed += 1
            elif key not in seen:
                seen.add(key)
                out.conversations.append((record.messages, tools))
    return out


def run_sft(cfg: Config, epochs: int, batch_size: int, lr: float | None, out: Path, limit: int | None = None,
            teacher: str | None = "expert", rollouts: list[str] | None = None) -> dict:
    """Train `cfg.model.name` on demonstrations (a teacher's, a policy's own successes, or both); writes a HF folder
    to `out`. Needs Ray initialised."""
    from transformers import AutoTokenizer

    from actors.learner import LearnerGroup, LearnerSettings
    from rl.models import MODEL_CONFIG_FILE, resolve_model

    if not teacher and not rollouts:
        raise ValueError("sft: nothing to learn from: give a teacher (--teacher) or runs (--from-rollouts)")
    demos = Demonstrations()
    if teacher:
        demos.add(teacher_demonstrations(cfg, teacher))
    if rollouts:
        demos.add(rollout_demonstrations(cfg, rollouts))
    source = " + ".join(([teacher] if teacher else []) + (["rollouts"] if rollouts else []))
    if not demos.conversations:
        raise ValueError(f"sft: no passed {source} episode among {demos.considered} on the training tasks "
                         f"({cfg.env.tasks_file or 'split ' + cfg.env.split}, mode {cfg.env.mode})")
    base = resolve_model(cfg.model.name, asdict(cfg.model.tiny))
    tokenizer = AutoTokenizer.from_pretrained(base)
    data = [encode_conversation(tokenizer, messages, tools) for messages, tools in demos.conversations]
    too_long = sum(len(ids) > cfg.rollout.max_model_len for ids, _ in data)
    data = [d for d in data if len(d[0]) <= cfg.rollout.max_model_len]
    if limit is not None:  # drawn from those that fit, so --limit N trains on N whenever N fit
        random.Random(cfg.seed).shuffle(data)
        data = data[:limit]
    print(f"sft: {len(data)} {source} conversations ({demos.failed} of {demos.considered} episodes failed tau2's "
          f"evaluator, {too_long} longer than rollout.max_model_len dropped), "
          f"mean {sum(len(i) for i, _ in data) / max(1, len(data)):.0f} tokens", file=sys.stderr)
    if not data:
        raise ValueError(f"sft: no {source} conversation fits rollout.max_model_len={cfg.rollout.max_model_len}; "
                         "raise it or try env.prompt=compact")
    steps = epochs * ((len(data) + batch_size - 1) // batch_size)
    # A warm-up then linear decay to 0: a constant lr high enough to fit a small model in few steps leaves it noisy.
    settings = replace(LearnerSettings.from_config(cfg, str(base)), lr=lr or cfg.learner.lr * 10, kl_coef=0.0,
                       clip_eps=1e9, clip_eps_high=None, aggregation="token_mean", lr_schedule_steps=steps,
                       temperature=1.0)
    learner = LearnerGroup(settings, num_ranks=cfg.learner.num_ranks)
    rng = random.Random(cfg.seed)
    nll_curve = []
    t0 = time.perf_counter()
    try:
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
        learner.save_hf(str(out), {MODEL_CONFIG_FILE: redacted_yaml(cfg)})
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
        p.add_argument("--limit", type=int, default=None, help="use N demonstrations, drawn at random (seeded)")
        p.add_argument("--teacher", choices=(*TEACHERS, "none"), default="expert",
                       help="who demonstrates on the training tasks (none: only --from-rollouts)")
        p.add_argument("--from-rollouts", nargs="+", default=None, metavar="RUN_DIR",
                       help="add a policy's own successful episodes from these runs' trajectories.jsonl")

    cfg, args = parse_cli(argv, description=__doc__, add_arguments=flags)
    out = Path(args.out or Path(cfg.run_dir) / "sft_model")
    init_ray(cfg, cfg.learner.num_ranks)
    try:
        teacher = None if args.teacher == "none" else args.teacher
        result = run_sft(cfg, args.epochs, args.batch_size, args.lr, out, args.limit, teacher, args.from_rollouts)
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
