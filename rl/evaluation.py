"""Held-out evaluation metrics: greedy success and tau2's pass^k, overall, per issue family and per fault count.

    metrics = heldout_metrics(greedy_episodes, sampled_episodes, trials)   # {"eval/success": ..., ...}

Keys (all under `eval/`, logged to metrics.jsonl and TensorBoard by the driver):
  eval/success                 greedy success rate (tau2's reward 1.0), one episode per task
  eval/success/faults_N        the same over tasks with N faults (the `|`-separated part of the task id)
  eval/success/<family>        the same per issue family (the bracketed part of the task id)
  eval/pass^k                  tau2's pass^k over `trials` sampled episodes per task, k = 1..trials
  eval/reward, eval/turns, eval/tool_calls, eval/tasks
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from math import comb

from envs.tau2_telecom.tasks import task_family, task_faults
from rl.contracts import Trajectory

EVAL_SAMPLE_SEED = 0  # which tasks a capped evaluation uses: fixed, so every run and seed sees the same ones


def pass_hat_k(trials: int, successes: int, k: int) -> float:
    """tau2's pass^k for one task: the chance that k trials drawn without replacement from `trials` all succeed,
    C(successes, k) / C(trials, k)."""
    if not 1 <= k <= trials:
        raise ValueError(f"pass^k needs 1 <= k <= trials, got k={k}, trials={trials}")
    return comb(successes, k) / comb(trials, k)


def mean_pass_hat_k(episodes: list[tuple[str, bool]]) -> dict[int, float]:
    """tau2's pass^k over (task id, success) episodes, for k = 1 .. the fewest trials any task has: the per-task
    pass^k averaged over tasks (what tau2.metrics.agent_metrics.compute_metrics reports)."""
    by_task: dict[str, list[bool]] = defaultdict(list)
    for task_id, success in episodes:
        by_task[task_id].append(success)
    max_k = min((len(v) for v in by_task.values()), default=0)
    return {k: sum(pass_hat_k(len(v), sum(v), k) for v in by_task.values()) / len(by_task)
            for k in range(1, max_k + 1)}


def select_eval_tasks(task_ids: list[str], n: int) -> list[str]:
    """All tasks when n covers them, else a fixed random sample of n (sorted ids alone would favour one family)."""
    ids = sorted(task_ids)
    if n >= len(ids):
        return ids
    return sorted(random.Random(EVAL_SAMPLE_SEED).sample(ids, n))


def hold_out(train: dict[str, dict], split: dict[str, dict], n: int,
             where: str = "the evaluation split") -> tuple[dict[str, dict], dict[str, dict], int]:
    """(training tasks, held-out tasks, how many training tasks were dropped). The held-out tasks are n of `split`
    (select_eval_tasks); the *whole* split is kept out of training, so no reported number comes from a task the
    policy trained on, even if n grows later (e.g. env.split=full with train.eval_split=test)."""
    if not split:
        raise ValueError(f"{where} has no task for this config (env.mode, env.max_faults)")
    kept = {k: v for k, v in train.items() if k not in split}
    if not kept:
        raise ValueError(f"no training task is left once {where} is held out")
    return kept, {tid: split[tid] for tid in select_eval_tasks(list(split), n)}, len(train) - len(kept)


def _rate(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def heldout_metrics(greedy: list[Trajectory], sampled: list[Trajectory] = (), trials: int = 0) -> dict:
    """eval/... metrics from greedy episodes (one per task) and `trials` sampled episodes per task."""
    out: dict[str, float] = {"eval/tasks": len(greedy)}
    if greedy:
        out["eval/success"] = _rate([t.eval.success for t in greedy])
        out["eval/reward"] = sum(t.eval.reward for t in greedy) / len(greedy)
        out["eval/turns"] = sum(t.turns for t in greedy) / len(greedy)
        out["eval/tool_calls"] = sum(t.tool_calls for t in greedy) / len(greedy)
        groups: dict[str, list[bool]] = defaultdict(list)
        for t in greedy:
            groups[f"faults_{len(task_faults(t.task_id))}"].append(t.eval.success)
            groups[task_family(t.task_id)].append(t.eval.success)
        out.update({f"eval/success/{name}": _rate(v) for name, v in sorted(groups.items())})
    if trials:
        counts = Counter(t.task_id for t in sampled)
        short = {tid: n for tid, n in counts.items() if n != trials}
        if short:
            raise ValueError(f"pass^k: expected {trials} sampled episodes per task, got {short}")
        passes = mean_pass_hat_k([(t.task_id, t.eval.success) for t in sampled])
        out.update({f"eval/pass^{k}": passes.get(k, 0.0) for k in range(1, trials + 1)})
    return out
