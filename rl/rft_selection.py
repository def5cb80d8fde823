"""Which of its samples a rejection-sampling round imitates (rl.rft --select): the reward-mixing ablation on the
recipe that learns.

  verifier  tau2's passes, at most --per-task distinct ones a task, the first found (STaR, ReST-EM; the default).
  reward    the config's reward section scores every sampled episode as the reward actor would (checks =
            reward.task_weight x tau2's reward; the reward model's score normalised by reward.rm_normalization;
            the two mixed by reward.mixing, rl/rewards.py), and each task keeps its --per-task best distinct
            episodes that score at least --min-reward (RAFT's reward-ranked fine-tuning). The presets map onto
            selections: task_weight 0 + rm_weight 1 lets the reward model alone choose (tau2's verdict is only
            logged: what it picks and fails is what the policy learns from a hackable reward); gated mixing with
            --min-reward at the pass level keeps tau2's passes and lets the reward model choose among them; weighted
            mixing without a floor also fills a task with too few passes with the reward model's favourite failures.

rl.evaluate's episode files keep tau2's reward, not its partial credit or the rejected-call count, so the reward
section's env_assertion_weight, action_weight, malformed_call_penalty and judge_weight must be 0 here (an error
names the key otherwise). The round's record in rl.rft's summary says how many of the chosen conversations tau2
passes and holds the reward model's on-policy audit on the round's samples (rl/reward_audit.py: pairwise accuracy
within a task, the same over pairs that ended alike, best-of-group, Spearman with the checks). The same-ending
number is the one to read: the tiny RM ranked a pass above a failure that crashed (too many errors, the turn limit)
0.67-1.0 of the time and above one where the agent stopped with the wrong fix 0.49-0.54 (two seeds' round-1
samples), so its overall agreement mostly says how the policy fails.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rl.config import RewardConfig

SELECTIONS = ("verifier", "reward")
# What the episode files cannot supply: reward keys that must be 0 for --select reward.
_UNRECORDED = ("env_assertion_weight", "action_weight", "malformed_call_penalty", "judge_weight")


@dataclass(frozen=True)
class SampledEpisode:
    """One episode of a round's sampling (rl.evaluate's episodes.jsonl row)."""

    task_id: str
    success: bool  # tau2's verdict
    tau2_reward: float
    # the policy's chat messages (Trajectory.messages): what the reward model reads, in rl.train too, and what
    # fine-tuning imitates (the row's `messages` is tau2's own log, in tau2's format)
    chat: list[dict]
    termination: str | None = None  # how it ended (agent_stop, too_many_errors, ...): the audit's same-ending pairs


def read_samples(folder: str | Path) -> list[SampledEpisode]:
    """A sampling folder's episodes, in file order."""
    from rl.run_dir import episode_file, read_jsonl

    path = episode_file(folder, "rl.rft --select reward:")
    out = []
    for line, row in enumerate(read_jsonl(path), 1):
        try:
            out.append(SampledEpisode(row["task_id"], bool(row["success"]), float(row["reward"]),
                                      row["chat_messages"], row.get("termination")))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}:{line}: not an rl.evaluate --model episode ({e!r})") from e
    return out


def check_reward_section(w: RewardConfig) -> None:
    """--select reward's preconditions on the config's reward section, as one error naming the keys."""
    bad = [f"reward.{k}={getattr(w, k)}" for k in _UNRECORDED if getattr(w, k)]
    if bad:
        raise ValueError(f"--select reward scores rl.evaluate's episodes, which record tau2's reward only: set "
                         f"{', '.join(bad)} to 0")
    if not w.task_weight and not (w.rm_path and w.rm_weight):
        raise ValueError("--select reward with reward.task_weight=0 and no reward model (reward.rm_path, "
                         "reward.rm_weight) scores every episode alike")


def episode_rewards(episodes: list[SampledEpisode], w: RewardConfig, rm: list[float | None]) -> list[float]:
    """Each episode's reward under the reward section's mixing; rm: the normalised reward-model scores (or Nones)."""
    from rl.rewards import mix

    checks = [w.task_weight * e.tau2_reward for e in episodes]
    return mix(checks, rm, [None] * len(episodes), [e.task_id for e in episodes], w)


def top_per_task(episodes: list[SampledEpisode], rewards: list[float], per_task: int,
                 min_reward: float | None) -> list[int]:
    """Indices of each task's `per_task` best-rewarded distinct conversations at or above `min_reward` (ties: the
    first sampled), tasks in order of first appearance."""
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(episodes):
        by_task[e.task_id].append(i)
    chosen = []
    for members in by_task.values():
        seen = set()
        for i in sorted(members, key=lambda i: -rewards[i]):  # stable: equal rewards keep sampling order
            key = json.dumps(episodes[i].chat, sort_keys=True)
            if len(seen) == per_task or (min_reward is not None and rewards[i] < min_reward):
                break
            if key not in seen:
                seen.add(key)
                chosen.append(i)
    return chosen


def selection_summary(episodes: list[SampledEpisode], rewards: list[float], chosen: list[int],
                      rm: list[float | None]) -> dict:
    """What a round chose, beside what tau2 says of it, and the reward model's on-policy audit on the samples."""
    from rl.reward_audit import audit_component

    passed_tasks = {e.task_id for e in episodes if e.success}
    chosen_tasks = {episodes[i].task_id for i in chosen}
    out = {"episodes": len(episodes), "chosen": len(chosen),
           "chosen_passing": sum(episodes[i].success for i in chosen),
           "tasks_chosen": len(chosen_tasks), "tasks_with_a_pass": len(passed_tasks),
           "tasks_chosen_without_a_pass": len(chosen_tasks - passed_tasks),
           "reward_mean": sum(rewards) / max(1, len(rewards))}
    if any(r is not None for r in rm):
        out["rm_vs_verifier"] = audit_component([e.task_id for e in episodes], [e.success for e in episodes],
                                                [e.tau2_reward for e in episodes], rm,
                                                [e.termination for e in episodes])
    return out


def select_by_reward(w: RewardConfig, folders: list[str | Path], per_task: int, min_reward: float | None,
                     train_ids: set[str]) -> tuple[list[list[dict]], dict]:
    """(the chosen conversations, selection_summary) over every episode of `folders` (a round imitates its own
    samples and every earlier round's) on the training tasks."""
    check_reward_section(w)
    episodes = [e for folder in folders for e in read_samples(folder) if e.task_id in train_ids]
    rm: list[float | None] = [None] * len(episodes)
    if w.rm_path:
        from rl.rm.model import RewardModelScorer, normalise

        scorer = RewardModelScorer(w.rm_path, max_len=w.rm_max_len)
        rm = normalise(scorer.score([e.chat for e in episodes]), w.rm_normalization, scorer.stats)
    rewards = episode_rewards(episodes, w, rm)
    chosen = top_per_task(episodes, rewards, per_task, min_reward)
    return [episodes[i].chat for i in chosen], selection_summary(episodes, rewards, chosen, rm)
