"""RewardActor: scores finished episodes - verifiable checks, the learned reward model, the LLM judge - and mixes
them (rl/rewards.py). It is an actor because the RM and the judge client hold models/connections of their own;
the driver only sees trajectories in, [{reward, components}] out.

Per episode, in order of trust:
  checks  tau2's verdict on the final device/DB state and required actions, partial credit, the format penalty
  rm      a Bradley-Terry reward model's score of the whole conversation, normalised to (0, 1)
  judge   an LLM's verdict on the task's natural-language assertions (fraction met), when the task has any
"""
from __future__ import annotations

import ray

from rl.rewards import RewardWeights, check_score, mix


class RewardActorImpl:
    def __init__(self, reward_cfg, judge_endpoint=None):
        """reward_cfg: rl.config.RewardConfig (or RewardWeights for checks only); judge_endpoint: the
        LLMEndpointConfig the NL-assertion judge calls when reward.judge_weight > 0."""
        self.weights = reward_cfg if isinstance(reward_cfg, RewardWeights) else RewardWeights.from_config(reward_cfg)
        self.rm = self.judge = None
        self.rm_normalization = getattr(reward_cfg, "rm_normalization", "train_stats")
        if getattr(reward_cfg, "rm_path", None):
            from rl.rm.model import RewardModelScorer

            self.rm = RewardModelScorer(reward_cfg.rm_path, max_len=reward_cfg.rm_max_len)
        if getattr(reward_cfg, "judge_weight", 0) > 0:
            from rl.rm.judges import AssertionJudge, LiteLLMChat

            if judge_endpoint is None or not judge_endpoint.model:
                raise ValueError("reward.judge_weight > 0 needs a judge endpoint (config section `judge`)")
            self.judge = AssertionJudge(LiteLLMChat(judge_endpoint), votes=reward_cfg.judge_votes,
                                        seed=reward_cfg.judge_seed)

    def score(self, trajectories: list[dict]) -> list[dict]:
        """trajectories: dicts with eval (tau2 EvalResult as a dict), and optionally rejected_calls, group (task
        group within the batch), messages (the conversation; needed by rm and judge) and nl_assertions."""
        checks, components = [], []
        for t in trajectories:
            c, comp = check_score(t["eval"], t.get("rejected_calls", 0), self.weights)
            checks.append(c)
            components.append(comp)
        rm = self._rm_scores(trajectories, components)
        judge = self._judge_scores(trajectories, components)
        groups = [t.get("group", i) for i, t in enumerate(trajectories)]
        rewards = mix(checks, rm, judge, groups, self.weights)
        return [{"reward": r, "components": comp} for r, comp in zip(rewards, components)]

    def _rm_scores(self, trajectories: list[dict], components: list[dict]) -> list[float | None]:
        if self.rm is None:
            return [None] * len(trajectories)
        from rl.rm.model import normalise

        raw = self.rm.score([t["messages"] for t in trajectories])
        scores = normalise(raw, self.rm_normalization, self.rm.stats)
        for comp, r, s in zip(components, raw, scores):
            comp["rm_raw"], comp["rm"] = r, s
        return scores

    def _judge_scores(self, trajectories: list[dict], components: list[dict]) -> list[float | None]:
        if self.judge is None or not any(t.get("nl_assertions") for t in trajectories):
            return [None] * len(trajectories)
        items = [(t["messages"], list(t.get("nl_assertions") or [])) for t in trajectories]
        out: list[float | None] = []
        for (_, assertions), met, comp in zip(items, self.judge.judge_many(items), components):  # one batched call
            if not assertions:
                out.append(None)
                continue
            comp["judge"] = sum(met) / len(met)
            out.append(comp["judge"])
        return out


RewardActor = ray.remote(num_cpus=0)(RewardActorImpl)
