"""Reward mixing: tau2's verifiable reward plus partial credit and a malformed-call penalty.

Every component is returned (and logged each step) whatever its weight, so an ablation can be judged
on all of them. The learned reward model and the LLM judge join here as further components.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RewardWeights:
    task_weight: float = 1.0  # tau2's reward: product of the components in the task's reward_basis
    env_assertion_weight: float = 0.0  # fraction of env assertions met (partial credit)
    action_weight: float = 0.0  # fraction of required actions performed (partial credit)
    malformed_call_penalty: float = 0.0  # per tool call rejected before reaching tau2
    max_penalty: float = 1.0

    @classmethod
    def from_config(cls, reward_cfg) -> RewardWeights:
        return cls(**{f: getattr(reward_cfg, f) for f in cls.__dataclass_fields__})


def score_episode(evaluation: dict, rejected_calls: int, w: RewardWeights) -> tuple[float, dict[str, float]]:
    """(reward, components) for one episode from its tau2 EvalResult dict."""
    components = {
        "tau2": float(evaluation["reward"]),
        "success": float(evaluation["success"]),
        "env_assertions": float(evaluation["env_assertion_fraction"]),
        "actions": float(evaluation["action_fraction"]),
        "malformed_calls": float(rejected_calls),
        "tool_errors": float(evaluation["tool_errors"]),
    }
    penalty = min(w.max_penalty, w.malformed_call_penalty * rejected_calls)
    reward = (w.task_weight * components["tau2"] + w.env_assertion_weight * components["env_assertions"]
              + w.action_weight * components["actions"] - penalty)
    components["penalty"] = penalty
    return reward, components
