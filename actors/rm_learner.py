"""Bradley-Terry reward-model learner: the policy learner's ZeRO-3 ranks (actors/learner.py) with a scalar head.

Only the model and the step differ from the policy learner: the model is rl.rm.model.PooledRewardModel, and
one step is one optimizer step on a batch of (chosen, rejected) pairs with loss
    -log sigmoid(r_chosen - r_rejected - margin_scale * margin)
averaged over the batch's real pairs. Every rank gets the same number of pairs (filler pairs weigh 0), hence the
same micro-steps and collectives - the same rule the policy learner follows.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ray
import torch
import torch.nn.functional as F

from actors.learner import LearnerGroup, LearnerRank, LearnerSettings
from rl.rm.model import PooledRewardModel, load_sequence_classifier
from rl.tensors import pad_with_attention

if TYPE_CHECKING:
    from rl.config import RewardModelConfig


@dataclass(frozen=True)
class RewardModelSettings(LearnerSettings):
    margin_scale: float = 0.0

    @classmethod
    def from_rm_config(cls, rm_cfg: RewardModelConfig, model_path: str, seed: int = 0) -> RewardModelSettings:
        """The run config's `rm` section (documented there)."""
        return cls(model_path=model_path, lr=rm_cfg.lr, weight_decay=rm_cfg.weight_decay,
                   micro_batch_size=rm_cfg.micro_batch_size, gradient_checkpointing=rm_cfg.gradient_checkpointing,
                   margin_scale=rm_cfg.margin_scale, seed=seed)


class RewardModelRank(LearnerRank):
    @staticmethod
    def build_model(model_path: str, dtype) -> torch.nn.Module:
        return PooledRewardModel(load_sequence_classifier(model_path, dtype))

    @staticmethod
    def hf_model(module: torch.nn.Module):
        return module.model

    def train_step(self, batch: dict) -> dict:
        """batch: chosen/rejected (token id lists), margin, weight (1 real pair, 0 filler), num_pairs (all ranks)."""
        s, t0, W = self.settings, time.perf_counter(), self.world_size
        n, mbs = len(batch["chosen"]), self.settings.micro_batch_size
        total = max(1, batch["num_pairs"])
        starts = list(range(0, n, mbs))
        self.engine.set_train_batch_size(len(starts) * mbs * W)
        sums = dict.fromkeys(("loss", "accuracy", "reward_margin", "chosen_reward", "rejected_reward"), 0.0)
        for i, start in enumerate(starts):
            self.engine.set_gradient_accumulation_boundary(i == len(starts) - 1)
            rows = slice(start, start + mbs)
            chosen, rejected = batch["chosen"][rows], batch["rejected"][rows]
            ids, mask = pad_with_attention(chosen + rejected)
            r = self.engine(ids.to(self.engine.device), mask.to(self.engine.device))
            rc, rr = r[:len(chosen)], r[len(chosen):]
            margin = torch.tensor(batch["margin"][rows], dtype=rc.dtype, device=rc.device)
            weight = torch.tensor(batch["weight"][rows], dtype=rc.dtype, device=rc.device)
            diff = rc - rr
            loss = (-F.logsigmoid(diff - s.margin_scale * margin) * weight).sum() / total
            # DeepSpeed averages gradients over ranks: scale by W so the update is the batch mean's gradient.
            self.engine.backward(loss * W, scale_wrt_gas=False)
            self.engine.step()
            with torch.no_grad():  # metrics: sums over real pairs / total -> the group adds the ranks' parts
                sums["loss"] += loss.item()
                sums["accuracy"] += float(((diff > 0).float() * weight).sum()) / total
                sums["reward_margin"] += float((diff * weight).sum()) / total
                sums["chosen_reward"] += float((rc * weight).sum()) / total
                sums["rejected_reward"] += float((rr * weight).sum()) / total
        grad_norm = self.engine.get_global_grad_norm()
        return {**sums, "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
                "seconds": time.perf_counter() - t0}

    @torch.no_grad()
    def scores(self, rows: list[list[int]]) -> list[float]:
        """Scores of this rank's share (a collective: every rank must call it with the same number of rows)."""
        self.engine.eval()
        out = []
        for start in range(0, len(rows), self.settings.micro_batch_size):
            ids, mask = pad_with_attention(rows[start:start + self.settings.micro_batch_size])
            out += self.engine(ids.to(self.engine.device), mask.to(self.engine.device)).tolist()
        self.engine.train()
        return out


RewardModelActor = ray.remote(RewardModelRank)


class RewardModelGroup(LearnerGroup):
    """Driver-side handle on num_ranks RewardModelRank actors."""

    actor_class = RewardModelActor

    def train_step(self, pairs: list[tuple[list[int], list[int], float]]) -> dict:
        """One optimizer step on (chosen_ids, rejected_ids, margin) pairs; returns batch-mean metrics."""
        if not pairs:
            raise ValueError("empty batch")
        per_rank = -(-len(pairs) // self.num_ranks)
        filler = min(pairs, key=lambda p: len(p[0]) + len(p[1]))
        padded = list(pairs) + [filler] * (per_rank * self.num_ranks - len(pairs))
        weights = [1.0] * len(pairs) + [0.0] * (len(padded) - len(pairs))
        shares = []
        for r in range(self.num_ranks):
            rows = slice(r * per_rank, (r + 1) * per_rank)
            shares.append({"chosen": [p[0] for p in padded[rows]], "rejected": [p[1] for p in padded[rows]],
                           "margin": [p[2] for p in padded[rows]], "weight": weights[rows],
                           "num_pairs": len(pairs)})
        results = self._call("train_step", shares)
        out = {k: sum(r[k] for r in results) for k in results[0] if k not in ("grad_norm", "seconds")}
        out["grad_norm"] = results[0]["grad_norm"]
        out["seconds"] = max(r["seconds"] for r in results)
        return out

    def scores(self, rows: list[list[int]]) -> list[float]:
        if not rows:
            return []
        per_rank = -(-len(rows) // self.num_ranks)
        padded = list(rows) + [min(rows, key=len)] * (per_rank * self.num_ranks - len(rows))
        shares = [padded[r * per_rank:(r + 1) * per_rank] for r in range(self.num_ranks)]
        return [x for share in self._call("scores", shares) for x in share][:len(rows)]
