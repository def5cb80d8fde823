"""A deterministic, resumable walk over a list: shuffled anew each pass (epoch), so every item comes once per pass.
The driver walks the training tasks with one and the demonstrations (algorithm.demo_coef) with another; the
checkpoint keeps each one's (epoch, index)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass
class ShuffledCursor:
    items: list[Any]
    seed: int
    epoch: int = 0
    index: int = 0

    def _order(self) -> list[Any]:
        order = list(self.items)
        random.Random(self.seed * 100003 + self.epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[Any]:
        out, order = [], self._order()
        while len(out) < n:
            out.append(order[self.index])
            self.index += 1
            if self.index == len(order):
                self.epoch, self.index = self.epoch + 1, 0
                order = self._order()
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
