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
from rl.rm.model import PooledRewardModel, load_sequence_classifier, train_only_top_layers
from rl.tensors import pad_with_attention

if TYPE_CHECKING:
    from rl.config import RewardModelConfig


@dataclass(frozen=True)
class RewardModelSettings(LearnerSettings):
    margin_scale: float = 0.0
    train_layers: int | None = None  # RewardModelConfig.train_layers

    @classmethod
    def from_rm_config(cls, rm_cfg: RewardModelConfig, model_path: str, seed: int = 0) -> RewardModelSettings:
        """The run config's `rm` section (documented there)."""
        return cls(model_path=model_path, lr=rm_cfg.lr, weight_decay=rm_cfg.weight_decay,
                   micro_batch_size=rm_cfg.micro_batch_size, gradient_checkpointing=rm_cfg.gradient_checkpointing,
                   margin_scale=rm_cfg.margin_scale, train_layers=rm_cfg.train_layers, seed=seed)


class RewardModelRank(LearnerRank):
    def build_model(self, model_path: str, dtype) -> torch.nn.Module:
        model = load_sequence_classifier(model_path, dtype)
        if self.settings.train_layers is not None:
            train_only_top_layers(model, self.settings.train_layers)
        return PooledRewardModel(model)

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
        for rows in deal_by_length([max(len(p[0]), len(p[1])) for p in padded], self.num_ranks):
            shares.append({"chosen": [padded[i][0] for i in rows], "rejected": [padded[i][1] for i in rows],
                           "margin": [padded[i][2] for i in rows], "weight": [weights[i] for i in rows],
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
        dealt = deal_by_length([len(r) for r in padded], self.num_ranks)
        out = [0.0] * len(padded)
        for share, got in zip(dealt, self._call("scores", [[padded[i] for i in share] for share in dealt])):
            for i, x in zip(share, got):
                out[i] = x
        return out[:len(rows)]


def deal_by_length(lengths: list[int], num_ranks: int) -> list[list[int]]:
    """Indices per rank, longest first, dealt round-robin: each rank's k-th micro step is about as long as every
    other rank's k-th (ZeRO-3's collectives make each micro step wait for the slowest rank) and a micro batch pads
    to similar lengths. On configs/rm_laptop.yaml's pairs (~500-token tau2 sides, ~120-token TeleQnA answers; 2 ranks)
    contiguous shares cost 1.25x the tokens (slowest rank per micro step, padding included) at micro batch 1 and
    1.43x at 2. len(lengths) must be a multiple of num_ranks (the group pads with fillers first)."""
    if len(lengths) % num_ranks:
        raise ValueError(f"{len(lengths)} rows do not split evenly over {num_ranks} ranks")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[r::num_ranks] for r in range(num_ranks)]
