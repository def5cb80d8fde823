"""Ragged Python rows -> right-padded tensors: the one padding helper of the driver, the learner and the reward
model (padding sits at the end of each row, where causal attention and the loss masks never look)."""
from __future__ import annotations

import torch


def pad_rows(rows: list, value=0, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """(len(rows), longest row) tensor; row i holds rows[i] followed by `value`."""
    out = torch.full((len(rows), max((len(r) for r in rows), default=0)), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


def pad_with_attention(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask) for token rows."""
    return pad_rows(rows, 0, torch.long), pad_rows([[1] * len(r) for r in rows], 0, torch.long)
