"""Demonstrations to imitate, as token rows: a teacher's episodes on the training tasks (the diagnosing expert or the
blind oracle) or a policy's own successes from runs' trajectories, only those tau2's evaluator passes, and never a
held-out task. rl.sft trains on them; rl.train's demonstration term (algorithm.demo_coef) keeps the policy close to
them during RL. Both draw the set with `demonstration_rows`, so with the same config and limit they are the same
conversations.
"""
from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rl.config import Config
from rl.runtime import split_tasks


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
        raise ValueError(f"unknown teacher {teacher!r}; expected one of {', '.join(TEACHERS)}")
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
            raise ValueError(f"--from-rollouts {run_dir}: no trajectories.jsonl there")
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


def demonstration_rows(cfg: Config, tokenizer, teacher: str | None = "expert", rollouts: list[str] | None = None,
                       limit: int | None = None) -> list[tuple[list[int], list[int]]]:
    """(token ids, loss mask) of each passed demonstration that fits rollout.max_model_len; with `limit`, that many
    drawn at random (seeded by cfg.seed) from those that fit. A bad or empty selection is a ValueError."""
    if not teacher and not rollouts:
        raise ValueError("nothing to learn from: give a teacher (--teacher) or runs (--from-rollouts)")
    demos = Demonstrations()
    if teacher:
        demos.add(teacher_demonstrations(cfg, teacher))
    if rollouts:
        demos.add(rollout_demonstrations(cfg, rollouts))
    source = " + ".join(([teacher] if teacher else []) + (["rollouts"] if rollouts else []))
    if not demos.conversations:
        raise ValueError(f"no passed {source} episode among {demos.considered} on the training tasks "
                         f"({cfg.env.tasks_file or 'split ' + cfg.env.split}, mode {cfg.env.mode})")
    rows = [encode_conversation(tokenizer, messages, tools) for messages, tools in demos.conversations]
    too_long = sum(len(ids) > cfg.rollout.max_model_len for ids, _ in rows)
    rows = [r for r in rows if len(r[0]) <= cfg.rollout.max_model_len]
    if limit is not None:  # drawn from those that fit, so a limit of N gives N whenever N fit
        random.Random(cfg.seed).shuffle(rows)
        rows = rows[:limit]
    print(f"demonstrations: {len(rows)} {source} conversations ({demos.failed} of {demos.considered} episodes failed "
          f"tau2's evaluator, {too_long} longer than rollout.max_model_len dropped), "
          f"mean {sum(len(i) for i, _ in rows) / max(1, len(rows)):.0f} tokens", file=sys.stderr)
    if not rows:
        raise ValueError(f"no {source} conversation fits rollout.max_model_len={cfg.rollout.max_model_len}; "
                         "raise it or try env.prompt=compact")
    return rows
