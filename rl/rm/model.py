"""The Bradley-Terry reward model: a scalar head on a causal LM, read at the last token of a conversation.

One definition serves training (actors/rm_learner.py, under DeepSpeed ZeRO-3) and scoring (RewardModelScorer,
a plain HF model in the reward actor or rl.rm.eval), so a trained model scores exactly what it was trained on:
the chat template applied to the whole conversation, cut from the START to max_len tokens (the verdict - what the
agent finally did - sits at the end; the shared system prompt is what gets cut).

A trained RM is an HF folder (AutoModelForSequenceClassification, num_labels=1, loadable by OpenRLHF and TRL)
plus telerl_rm.json: max_len and the mean/std of its scores on training conversations, which the hybrid reward
uses to normalise the learned score to [0, 1].
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch

from rl.choices import RM_NORMALIZATIONS
from rl.tensors import pad_with_attention

RM_META = "telerl_rm.json"


def conversation_ids(tokenizer, messages: list[dict], max_len: int) -> list[int]:
    """Token ids of a conversation as the RM reads it (no generation prompt: the conversation is complete)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_len:]


def score_head_name(model) -> str:
    """The scalar head of a *ForSequenceClassification model (`score` in Llama/Qwen/Mistral/GPT-2 families)."""
    for name in ("score", "classifier"):
        if isinstance(getattr(model, name, None), torch.nn.Linear):
            return name
    raise ValueError(f"{type(model).__name__} has no linear `score`/`classifier` head; use a causal LM family "
                     "whose ForSequenceClassification class has one (Llama, Qwen2/3, Mistral, GPT-2, ...)")


def train_only_top_layers(model, n: int) -> None:
    """Freezes all but the top n transformer layers, the final norm and the scalar head of a ForSequenceClassification
    model (Llama, Qwen, Mistral families: base_model.layers). Autograd then stops at the lowest trained layer, so a
    step costs the forward through the frozen ones and the backward through the n on top only."""
    layers = getattr(model.base_model, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"rm.train_layers: {type(model).__name__} has no base_model.layers to choose from; "
                         "leave rm.train_layers unset to train every weight")
    if not 0 < n <= len(layers):
        raise ValueError(f"rm.train_layers: got {n}, the model has {len(layers)} layers")
    model.requires_grad_(False)
    for layer in layers[len(layers) - n:]:
        layer.requires_grad_(True)
    norm = getattr(model.base_model, "norm", None)
    if isinstance(norm, torch.nn.Module):
        norm.requires_grad_(True)
    getattr(model, score_head_name(model)).requires_grad_(True)


class PooledRewardModel(torch.nn.Module):
    """Wraps a HF ForSequenceClassification model and reads the head at each row's last real token.

    HF's own pooling looks for the last non-pad token by pad_token_id, which is wrong when pad == eos (common) and
    the conversation ends in eos; the attention mask says where each row ends, whatever the tokens are."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.head_name = score_head_name(model)  # a name, not a second reference: ZeRO-3 hooks each module once

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                       use_cache=False).last_hidden_state
        last = attention_mask.sum(-1).long() - 1  # right padding: row i ends at lengths[i] - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return getattr(self.model, self.head_name)(pooled).squeeze(-1).float()


def load_sequence_classifier(path: str, dtype=torch.float32):
    """A causal-LM folder (fresh head, random init) or a trained RM folder, as AutoModelForSequenceClassification."""
    import logging

    from transformers import AutoModelForSequenceClassification

    # transformers prints a table of every missing key; on a causal-LM folder the head is missing by design, so the
    # table is read here and only a key that should have been there is reported.
    hf_logger = logging.getLogger("transformers.modeling_utils")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype,
                                                                         output_loading_info=True)
    finally:
        hf_logger.setLevel(level)
    head = score_head_name(model)
    unexpected_missing = sorted(k for k in info["missing_keys"] if k.split(".")[0] != head)
    if unexpected_missing:
        warnings.warn(f"{path}: weights not in the checkpoint, initialised at random: {', '.join(unexpected_missing)}",
                      stacklevel=2)
    model.config.use_cache = False
    if model.config.pad_token_id is None:  # HF's classifier config wants one; our pooling does not use it
        model.config.pad_token_id = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
    return model


def write_meta(max_len: int, scores: list[float], base_model: str) -> str:
    mean = sum(scores) / max(1, len(scores))
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / max(1, len(scores) - 1)) if len(scores) > 1 else 1.0
    return json.dumps({"max_len": max_len, "mean": mean, "std": max(std, 1e-6), "n": len(scores),
                       "base_model": base_model, "pooling": "last_token", "truncation": "left"}, indent=2)


class RewardModelScorer:
    """Scores whole conversations with a trained RM (plain HF, no DeepSpeed; CPU or one GPU)."""

    def __init__(self, path: str, max_len: int | None = None, batch_size: int = 8, device: str | None = None):
        from transformers import AutoTokenizer

        folder = Path(path)
        meta_path = folder / RM_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{path} is not a trained reward model folder (no {RM_META}; train one with "
                                    "`python -m rl.rm.train`)")
        self.meta = json.loads(meta_path.read_text())
        self.max_len = max_len or int(self.meta["max_len"])
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = PooledRewardModel(load_sequence_classifier(path)).to(self.device).eval()
        self.path = str(path)

    @property
    def stats(self) -> dict:
        return {"mean": float(self.meta["mean"]), "std": float(self.meta["std"])}

    @torch.no_grad()
    def score_ids(self, rows: list[list[int]]) -> list[float]:
        # Similar lengths together: less padding per batch (results go back in the caller's order).
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        scores = [0.0] * len(rows)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            ids, mask = pad_with_attention([rows[i] for i in idx])
            for i, s in zip(idx, self.model(ids.to(self.device), mask.to(self.device)).tolist()):
                scores[i] = s
        return scores

    def score(self, conversations: list[list[dict]]) -> list[float]:
        return self.score_ids([conversation_ids(self.tokenizer, c, self.max_len) for c in conversations])


def normalise(scores: list[float], how: str, stats: dict) -> list[float]:
    """Raw RM scores -> (0, 1). train_stats: sigmoid of the z-score by the RM's training-score mean/std (stable
    across steps, comparable across batches); batch: z-score within this batch (only the order inside it counts)."""
    if not scores:
        return []
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:  # min/max clamping would turn NaN into a reward of 1.0
        raise ValueError(f"the reward model gave non-finite scores ({scores[bad[0]]}) for {len(bad)} of "
                         f"{len(scores)} episodes (first: index {bad[0]}); its weights may be broken")
    if how == "batch":
        mean = sum(scores) / len(scores)
        var = sum((s - mean) ** 2 for s in scores) / len(scores)
        std = math.sqrt(var) if var > 1e-12 else 1.0
    elif how == "train_stats":
        mean, std = stats["mean"], stats["std"]
    else:
        raise ValueError(f"unknown RM normalisation {how!r}: expected one of {', '.join(RM_NORMALIZATIONS)}")
    return [1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, (s - mean) / std)))) for s in scores]
