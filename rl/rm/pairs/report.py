"""`Report`: what a pair generator produced (pairs per subset) and what it skipped, with the reasons; every
generator fills one, and the command line prints it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Report:
    """What a generator produced and what it skipped, with reasons (counts + the first few details)."""

    pairs: Counter = field(default_factory=Counter)  # subset -> pairs
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    details: list[str] = field(default_factory=list)
    max_details: int = 20
    replayed: Counter = field(default_factory=Counter)  # tau2 kinds: perturbed episodes replayed and scored
    verifier_passed: Counter = field(default_factory=Counter)  # ... of which tau2 still scored a success

    def skip(self, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if detail and len(self.details) < self.max_details:
            self.details.append(f"{reason}: {detail}")

    def lines(self) -> list[str]:
        out = [f"pairs: {sum(self.pairs.values())}"]
        out += [f"  {k}: {v}" for k, v in sorted(self.pairs.items())]
        if self.replayed:
            out.append("perturbed episodes replayed (of which the verifier still passed):")
            out += [f"  {k}: {v} ({self.verifier_passed[k]})" for k, v in sorted(self.replayed.items())]
        if self.skipped:
            out.append(f"skipped: {sum(self.skipped.values())}")
            out += [f"  {k}: {v}" for k, v in sorted(self.skipped.items())]
            out += [f"    e.g. {d}" for d in self.details]
        return out
