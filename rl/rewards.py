"""Reward mixing: verifiable checks first, then learned/judged scores under one of three mixing rules.

The formulas and every weight are documented once, on rl.config.RewardConfig (the section these functions read).
Every component is returned (and logged each step) whatever its weight, so an ablation can be judged on all of
them. A component that does not apply to an episode (no judge configured, a task without NL assertions) is None:
it is left out of the logs' average and counts as neutral in the mix (0 added; factor 1 when multiplicative).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from rl.choices import MIXINGS
from rl.config import RewardConfig

if TYPE_CHECKING:
    from envs.tau2_telecom.session import EvalResult

# The gated squeeze keeps the soft part below this fraction of the smallest check-score gap in a group.
_GATE_FRACTION = 0.49


def check_score(evaluation: EvalResult, w: RewardConfig) -> tuple[float, dict[str, float]]:
    """(checks, components) for one episode from tau2's verdict: only programs judged this."""
    components = {
        "tau2": float(evaluation.reward),
        "success": float(evaluation.success),
        "env_assertions": float(evaluation.env_assertion_fraction),
        "actions": float(evaluation.action_fraction),
        "malformed_calls": float(evaluation.rejected_calls),
        "tool_errors": float(evaluation.tool_errors),
    }
    penalty = min(w.max_penalty, w.malformed_call_penalty * evaluation.rejected_calls)
    checks = (w.task_weight * components["tau2"] + w.env_assertion_weight * components["env_assertions"]
              + w.action_weight * components["actions"] - penalty)
    components["penalty"] = penalty
    components["checks"] = checks
    return checks, components


def soft_score(rm: float | None, judge: float | None, w: RewardConfig) -> float:
    """The weighted learned/judged part, in [0, rm_weight + judge_weight]; missing components add nothing."""
    return (w.rm_weight * rm if rm is not None else 0.0) + (w.judge_weight * judge if judge is not None else 0.0)


def mix(checks: list[float], rm: list[float | None], judge: list[float | None], groups: list, w: RewardConfig,
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
    raise ValueError(f"unknown reward mixing {w.mixing!r}: expected one of {', '.join(MIXINGS)}")

