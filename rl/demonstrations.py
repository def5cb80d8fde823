"""Demonstrations to imitate, as token rows: a teacher's episodes on the training tasks (the diagnosing expert or the
blind oracle) or a policy's own successes (runs' trajectories, or rl.evaluate's episodes of a model), only those
tau2's evaluator passes, and never a held-out task. rl.sft trains on them; rl.train's demonstration term
(algorithm.demo_coef) keeps the policy close to them during RL. Both draw the teacher's set with
`demonstration_rows`, so with the same config and limit they are the same conversations.
"""
from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from dataclasses import dataclass, field

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


def _episode_rows(source: str) -> list[tuple[str, bool, list]]:
    """[(task id, tau2's success, the policy's chat messages)] of a run's trajectories.jsonl or an
    rl.evaluate folder's episodes.jsonl (a folder holding either, or the file itself)."""
    from rl.contracts import EpisodeRecord
    from rl.run_dir import episode_file, read_jsonl

    path = episode_file(source, "--from-rollouts")
    rows = []
    for line, row in enumerate(read_jsonl(path), 1):
        if "trial" in row:  # rl.evaluate: the chat conversation is kept for model agents only
            if not isinstance(row.get("chat_messages"), list):
                raise ValueError(f"{path}:{line}: no 'chat_messages' (the policy's own conversation): only "
                                 "rl.evaluate --model episodes can be imitated")
            rows.append((row["task_id"], bool(row["success"]), row["chat_messages"]))
        else:
            record = EpisodeRecord.from_row(row)
            rows.append((record.task_id, record.components.get("success", 0.0) >= 1.0 - 1e-6, record.messages))
    return rows


PREFERENCES = ("first", "shortest")  # which of a task's passes a per-task cap keeps


def _turns_and_length(messages: list[dict]) -> tuple[int, int]:
    """How long a conversation is: the agent's turns, then its characters (a tie-break)."""
    return sum(m.get("role") == "assistant" for m in messages), sum(len(str(m.get("content") or "")) for m in messages)


def rollout_demonstrations(cfg: Config, sources: list[str], per_task: int | None = None,
                           prefer: str = "first") -> Demonstrations:
    """A policy's own successful episodes (tau2's verdict) on the training tasks, from runs' trajectories.jsonl or
    rl.evaluate's episodes.jsonl (sampling the training tasks k times: rejection sampling); each distinct
    conversation once, and with `per_task` at most that many per task, so that the tasks the policy already solves
    every time do not drown the ones it solves once in k. Which of a task's passes the cap keeps (`prefer`): the
    first found, or the shortest (fewest agent turns, then fewest characters; ties: the first found), so a pass that
    wandered (redundant checks, rejected calls) before it fixed the phone gives way to one that went straight there.
    Conversations come back in the order they were found either way."""
    from envs.tau2_telecom.world import get_world

    if prefer not in PREFERENCES:
        raise ValueError(f"unknown preference {prefer!r} among a task's passes; expected one of "
                         f"{', '.join(PREFERENCES)}")
    train_ids = set(split_tasks(cfg).train)
    tools = get_world(cfg.env.policy).prompt_tools(cfg.env.mode, cfg.env.prompt)
    out, seen = Demonstrations(), set()
    passes: dict[str, list[tuple[int, list[dict]]]] = defaultdict(list)  # task -> (order found, messages)
    for source in sources:
        for task_id, success, messages in _episode_rows(source):
            if task_id not in train_ids:
                continue  # held-out tasks (e.g. a run's evaluation episodes) never become training data
            out.considered += 1
            key = json.dumps(messages, sort_keys=True)
            if not success:
                out.failed += 1
            elif key not in seen:
                seen.add(key)
                passes[task_id].append((len(seen), messages))
    kept = []
    for found in passes.values():
        if prefer == "shortest":
            found = sorted(found, key=lambda p: _turns_and_length(p[1]))  # stable: ties keep the order found
        kept += found[:per_task] if per_task is not None else found
    out.conversations = [(messages, tools) for _, messages in sorted(kept, key=lambda p: p[0])]
    return out


def chosen_demonstrations(cfg: Config, conversations: list[list[dict]]) -> Demonstrations:
    """A policy's own conversations chosen elsewhere (rl.rft --select reward), imitated as given."""
    from envs.tau2_telecom.world import get_world

    tools = get_world(cfg.env.policy).prompt_tools(cfg.env.mode, cfg.env.prompt)
    return Demonstrations([(messages, tools) for messages in conversations], considered=len(conversations))


def demonstration_rows(cfg: Config, tokenizer, teacher: str | None = "expert",
                       rollouts: list[str] | Demonstrations | None = None, limit: int | None = None,
                       per_task: int | None = None, prefer: str = "first") -> list[tuple[list[int], list[int]]]:
    """(token ids, loss mask) of each passed demonstration that fits rollout.max_model_len. With `limit`, that many
    of the teacher's, drawn at random (seeded by cfg.seed) from those that fit, so a teacher's draw is the same with
    or without rollouts beside it (the few demonstrations a warm start had, plus the policy's successes); without a
    teacher the limit draws from the rollouts; `per_task` caps the rollouts' conversations per task, keeping the
    first found or the shortest (`prefer`, rollout_demonstrations). `rollouts` is
    runs to take tau2's passes from, or conversations already chosen (chosen_demonstrations). A bad or empty
    selection is a ValueError."""
    if not teacher and not rollouts:
        raise ValueError("nothing to learn from: give a teacher (--teacher) or runs (--from-rollouts)")
    if isinstance(rollouts, Demonstrations):
        own = rollouts
    else:
        own = rollout_demonstrations(cfg, rollouts, per_task, prefer) if rollouts else Demonstrations()
    parts = [teacher_demonstrations(cfg, teacher) if teacher else Demonstrations(), own]
    source = " + ".join(([teacher] if teacher else []) + (["rollouts"] if rollouts else []))
    if not any(d.conversations for d in parts):
        raise ValueError(f"no passed {source} episode among {sum(d.considered for d in parts)} on the training "
                         f"tasks ({cfg.env.tasks_file or 'split ' + cfg.env.split}, mode {cfg.env.mode})")
    limited = 0 if teacher else 1  # the part `limit` draws from: the teacher's, else the rollouts'
    rows, too_long, counts = [], 0, []
    for i, demos in enumerate(parts):
        encoded = [encode_conversation(tokenizer, messages, tools) for messages, tools in demos.conversations]
        fit = [r for r in encoded if len(r[0]) <= cfg.rollout.max_model_len]
        too_long += len(encoded) - len(fit)
        if limit is not None and i == limited:  # drawn from those that fit: N whenever N fit
            random.Random(cfg.seed).shuffle(fit)
            fit = fit[:limit]
        rows += fit
        counts.append(len(fit))
    kept = " + ".join(f"{n} {name}" for n, name, d in zip(counts, (teacher, "rollout"), parts) if d.considered)
    print(f"demonstrations: {kept} conversations ({sum(d.failed for d in parts)} of "
          f"{sum(d.considered for d in parts)} episodes failed tau2's evaluator, {too_long} longer than "
          f"rollout.max_model_len dropped), mean {sum(len(i) for i, _ in rows) / max(1, len(rows)):.0f} tokens",
          file=sys.stderr)
    if not rows:
        raise ValueError(f"no {source} conversation fits rollout.max_model_len={cfg.rollout.max_model_len}; "
                         "raise it or try env.prompt=compact")
    return rows
