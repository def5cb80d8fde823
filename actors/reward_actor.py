"""RewardActor: scores finished episodes - verifiable checks, the learned reward model, the LLM judge - and mixes
them (rl/rewards.py; the formulas are documented once, on rl.config.RewardConfig). It is an actor because the RM
and the judge client hold models/connections of their own; the driver only sees Trajectory in, Score out.

Per episode, in order of trust:
  checks  tau2's verdict on the final device/DB state and required actions, partial credit, the format penalty
  rm      a Bradley-Terry reward model's score of the whole conversation, normalised to (0, 1)
  judge   an LLM's verdict on the task's natural-language assertions (fraction met), when the task has any
"""
from __future__ import annotations

import ray

from envs.tau2_telecom.endpoint import LLMEndpoint
from rl.config import RewardConfig
from rl.contracts import Score, Trajectory
from rl.rewards import check_score, mix


class RewardActorImpl:
    def __init__(self, reward_cfg: RewardConfig, judge_endpoint: LLMEndpoint | None = None):
        """reward_cfg: the run config's reward section (weights, mixing, reward model); judge_endpoint: what the
        NL-assertion judge calls when reward_cfg.judge_weight > 0."""
        self.cfg = reward_cfg
        self.rm = self.judge = None
        if reward_cfg.rm_path:
            from rl.rm.model import RewardModelScorer

            self.rm = RewardModelScorer(reward_cfg.rm_path, max_len=reward_cfg.rm_max_len)
        if reward_cfg.judge_weight > 0:
            from rl.rm.judges import AssertionJudge, LiteLLMChat

            if judge_endpoint is None or not judge_endpoint.model:
                raise ValueError("reward.judge_weight > 0 needs a judge endpoint (config section `judge`)")
            self.judge = AssertionJudge(LiteLLMChat(judge_endpoint), votes=reward_cfg.judge_votes,
                                        seed=reward_cfg.judge_seed)

    def score(self, trajectories: list[Trajectory]) -> list[Score]:
        """One Score per trajectory. The reward model and the judge read `messages`; gated mixing works within
        each trajectory's `group`."""
        checks, components = [], []
        for t in trajectories:
            c, comp = check_score(t.eval, self.cfg)
            checks.append(c)
            components.append(comp)
        rm = self._rm_scores(trajectories, components)
        judge = self._judge_scores(trajectories, components)
        rewards = mix(checks, rm, judge, [t.group for t in trajectories], self.cfg)
        return [Score(r, comp) for r, comp in zip(rewards, components)]

    def _rm_scores(self, trajectories: list[Trajectory], components: list[dict]) -> list[float | None]:
        if self.rm is None:
            return [None] * len(trajectories)
        from rl.rm.model import normalise

        raw = self.rm.score([t.messages for t in trajectories])
        scores = normalise(raw, self.cfg.rm_normalization, self.rm.stats)
        for comp, r, s in zip(components, raw, scores):
            comp["rm_raw"], comp["rm"] = r, s
        return scores

    def _judge_scores(self, trajectories: list[Trajectory], components: list[dict]) -> list[float | None]:
        if self.judge is None or not any(t.nl_assertions for t in trajectories):
            return [None] * len(trajectories)
        items = [(t.messages, list(t.nl_assertions)) for t in trajectories]
        out: list[float | None] = []
        for (_, assertions), met, comp in zip(items, self.judge.judge_many(items), components):  # one batched call
            if not assertions:
                out.append(None)
                continue
            comp["judge"] = sum(met) / len(met)
            out.append(comp["judge"])
        return out


RewardActor = ray.remote(num_cpus=0)(RewardActorImpl)
