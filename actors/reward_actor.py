"""RewardActor: scores finished episodes. Today: tau2's verifiable checks, partial credit and a format
penalty (rl/rewards.py). It is an actor because the learned reward model and the LLM judge that join it
hold models of their own; the interface - trajectories in, reward + components out - stays the same."""
from __future__ import annotations

import ray

from rl.rewards import RewardWeights, score_episode


class RewardActorImpl:
    def __init__(self, weights: RewardWeights):
        self.weights = weights

    def score(self, trajectories: list[dict]) -> list[dict]:
        out = []
        for t in trajectories:
            reward, components = score_episode(t["eval"], t.get("rejected_calls", 0), self.weights)
            out.append({"reward": reward, "components": components})
        return out


RewardActor = ray.remote(num_cpus=0)(RewardActorImpl)
