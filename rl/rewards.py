"""Reward mixing: verifiable checks first, then learned/judged scores under one of three mixing rules.

    checks = task_weight * tau2 + env_assertion_weight * env_assertions + action_weight * actions - penalty
    soft   = rm_weight * rm + judge_weight * judge        (rm, judge in [0, 1]; see RewardConfig in rl/config.py)
    weighted:        checks + soft
    gated:           checks + soft, the soft part squeezed per task group below half the smallest gap between
                     distinct check scores, so it only orders episodes with the same verified outcome
    multiplicative:  checks * (1 - rm_weight - judge_weight + soft)

Every component is returned (and logged each step) whatever its weight, so an ablation can be judged on all of
them. A component that does not apply to an episode (no judge configured, a task without NL assertions) is None:
it is left out of the logs' average and counts as neutral in the mix (0 added; factor 1 when multiplicative).
"""
from __future__ import annotations

from dataclasses import dataclass

# The gated squeeze keeps the soft part below this fraction of the smallest check-score gap in a group.
_GATE_FRACTION = 0.49


@dataclass(frozen=True)
class RewardWeights:
    task_weight: float = 1.0  # tau2's reward: product of the components in the task's reward_basis
    env_assertion_weight: float = 0.0  # fraction of env assertions met (partial credit)
    action_weight: float = 0.0  # fraction of required actions performed (partial credit)
    malformed_call_penalty: float = 0.0  # per tool call rejected before reaching tau2
    max_penalty: float = 1.0
    mixing: str = "weighted"  # weighted | gated | multiplicative
    rm_weight: float = 0.0
    judge_weight: float = 0.0

    @classmethod
    def from_config(cls, reward_cfg) -> RewardWeights:
        return cls(**{f: getattr(reward_cfg, f) for f in cls.__dataclass_fields__})


def check_score(evaluation: dict, rejected_calls: int, w: RewardWeights) -> tuple[float, dict[str, float]]:
    """(checks, components) for one episode from its tau2 EvalResult dict: only programs judged this."""
    components = {
        "tau2": float(evaluation["reward"]),
        "success": float(evaluation["success"]),
        "env_assertions": float(evaluation["env_assertion_fraction"]),
        "actions": float(evaluation["action_fraction"]),
        "malformed_calls": float(rejected_calls),
        "tool_errors": float(evaluation["tool_errors"]),
    }
    penalty = min(w.max_penalty, w.malformed_call_penalty * rejected_calls)
    checks = (w.task_weight * components["tau2"] + w.env_assertion_weight * components["env_assertions"]
              + w.action_weight * components["actions"] - penalty)
    components["penalty"] = penalty
    components["checks"] = checks
    return checks, components


def soft_score(rm: float | None, judge: float | None, w: RewardWeights) -> float:
    """The weighted learned/judged part, in [0, rm_weight + judge_weight]; missing components add nothing."""
    return (w.rm_weight * rm if rm is not None else 0.0) + (w.judge_weight * judge if judge is not None else 0.0)


def mix(checks: list[float], rm: list[float | None], judge: list[float | None], groups: list, w: RewardWeights,
        ) -> list[float]:
    """Final rewards of a batch. groups[i] names episode i's task group (gated mixing works within groups)."""
    soft = [soft_score(r, j, w) for r, j in zip(rm, judge)]
    if w.mixing == "weighted":
        return [c + s for c, s in zip(checks, soft)]
    if w.mixing == "multiplicative":
        # A missing component is neutral: it keeps its weight's share of the factor at 1.
        missing = [(w.rm_weight if r is None else 0.0) + (w.judge_weight if j is None else 0.0)
                   for r, j in zip(rm, judge)]
        total = w.rm_weight + w.judge_weight
        return [c * (1.0 - total + s + m) for c, s, m in zip(checks, soft, missing)]
    if w.mixing == "gated":
        width = {}
        for g in set(groups):
            levels = sorted({round(c, 9) for c, gg in zip(checks, groups) if gg == g})
            gap = min((b - a for a, b in zip(levels, levels[1:])), default=float("inf"))
            width[g] = min(1.0, _GATE_FRACTION * gap / max(w.rm_weight + w.judge_weight, 1e-12))
        return [c + s * width[g] for c, s, g in zip(checks, soft, groups)]
    raise ValueError(f"unknown reward mixing {w.mixing!r}: expected weighted, gated or multiplicative")

