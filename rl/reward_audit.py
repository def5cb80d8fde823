"""On-policy reward audit: does a learned or judged reward component agree with tau2's verdict on the policy's own
episodes? Static pair accuracy predicts RL outcomes weakly; agreement on what the policy samples now is what tells
whether RL is about to optimise something the verifier does not reward.

    audit = audit_component(groups, verdicts, checks, values)   # one step's episodes, one component
    monitor = AuditMonitor(min_agreement=0.6, patience=3)       # the alarm (reward.audit_min_agreement)

For one component over one step (every list has one entry per episode; `groups` says which episodes share a task):
  pairwise_acc     over (passed, failed) episode pairs of the same group: the share the component ranks the passed
                   one higher (a tie counts 1/2). The on-policy version of a reward model's pair accuracy.
  pairwise_acc_same_ending   the same over the pairs whose two episodes ended the same way (both stopped by the
                   agent, say), when the endings are known: a failure that crashed on a broken tool call is easy to
                   rank below a success (on the tiny policy's samples that surface alone agrees with tau2 ~0.8);
                   this is the on-policy counterpart of the static pairs' surface-matched subset.
  best_of_group    over groups with a passing episode: the share where the component's top-scored episode passed
                   (ties at the top share the credit): would best-of-n selection by this component pick a success?
  spearman_checks  rank correlation with the verifiable checks score over all episodes (average ranks for ties;
                   tau2's own reward where the reward's weights leave the checks at 0: checks_scores).
  group_std        the component's mean within-group standard deviation: ~0 means it cannot tell the group apart.
A statistic without data (no mixed group, a constant score) is left out, never reported as 0.
"""
from __future__ import annotations

import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field

AUDITED_COMPONENTS = ("rm", "judge")  # the scores that are not the verifier's


def _by_group(groups: list, *columns: list) -> dict:
    out: dict = defaultdict(list)
    for i, g in enumerate(groups):
        out[g].append(tuple(c[i] for c in columns))
    return out


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):  # ties share the average rank
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation; None when either side is constant (or fewer than 2 points)."""
    if len(x) < 2:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else None


def audit_component(groups: list, verdicts: list[bool], checks: list[float], values: list[float | None],
                    endings: list[str | None] | None = None) -> dict:
    """The audit of one component over one step (see the module docstring); episodes without a value are skipped.
    `endings`: how each episode ended (its termination), for pairwise_acc_same_ending."""
    keep = [i for i, v in enumerate(values) if v is not None]
    groups, verdicts = [groups[i] for i in keep], [verdicts[i] for i in keep]
    checks, values = [checks[i] for i in keep], [float(values[i]) for i in keep]
    ends = [endings[i] for i in keep] if endings is not None else [None] * len(keep)
    out: dict[str, float] = {}
    pair_credit, same_ending, best_credit, stds = [], [], [], []
    for members in _by_group(groups, verdicts, values, ends).values():
        passed = [(v, e) for ok, v, e in members if ok]
        failed = [(v, e) for ok, v, e in members if not ok]
        for p, p_end in passed:
            for f, f_end in failed:
                credit = 1.0 if p > f else 0.5 if p == f else 0.0
                pair_credit.append(credit)
                if p_end is not None and p_end == f_end:
                    same_ending.append(credit)
        if passed:
            top = max(v for _, v, _ in members)
            at_top = [ok for ok, v, _ in members if v == top]
            best_credit.append(sum(at_top) / len(at_top))
        if len(members) > 1:
            mean = sum(v for _, v, _ in members) / len(members)
            stds.append(math.sqrt(sum((v - mean) ** 2 for _, v, _ in members) / len(members)))
    if pair_credit:
        out["pairwise_acc"] = sum(pair_credit) / len(pair_credit)
        out["pairs"] = len(pair_credit)
    if same_ending:
        out["pairwise_acc_same_ending"] = sum(same_ending) / len(same_ending)
        out["pairs_same_ending"] = len(same_ending)
    if best_credit:
        out["best_of_group"] = sum(best_credit) / len(best_credit)
    rho = spearman(values, checks)
    if rho is not None:
        out["spearman_checks"] = rho
    if stds:
        out["group_std"] = sum(stds) / len(stds)
    return out


def checks_scores(components: list[dict]) -> list[float]:
    """Each episode's verifiable score: the reward's `checks` component, or tau2's reward where only that was kept
    (an rl.evaluate folder) or where the checks are the same for every episode while tau2's verdicts are not (a
    reward with the checks' weights at 0, as in an rm_only ablation: the audit still compares with the verifier)."""
    checks = [c.get("checks", c.get("tau2", 0.0)) for c in components]
    tau2 = [c.get("tau2", 0.0) for c in components]
    return tau2 if len(set(checks)) == 1 and len(set(tau2)) > 1 else checks


def audit_step(groups: list, verdicts: list[bool], components: list[dict],
               endings: list[str | None] | None = None) -> dict:
    """`reward/<component>_vs_verifier/<statistic>` for every audited component present in the step's scores."""
    checks = checks_scores(components)
    out = {}
    for name in AUDITED_COMPONENTS:
        values = [c.get(name) for c in components]
        if any(v is not None for v in values):
            for stat, v in audit_component(groups, verdicts, checks, values, endings).items():
                out[f"reward/{name}_vs_verifier/{stat}"] = v
    return out


@dataclass
class AuditMonitor:
    """Warns when a component's on-policy pairwise agreement stays below `min_agreement` for `patience` steps in a
    row: the sign that the policy found what the component rewards and the verifier does not. Steps without a
    mixed group neither count nor reset."""

    min_agreement: float | None
    patience: int = 3
    low_steps: dict[str, int] = field(default_factory=dict)

    def update(self, step: int, audit: dict) -> dict:
        """`reward/<component>_vs_verifier/alarm` (1 while it rings, else 0) for each audited component."""
        out = {}
        if self.min_agreement is None:
            return out
        for name in AUDITED_COMPONENTS:
            acc = audit.get(f"reward/{name}_vs_verifier/pairwise_acc")
            if acc is None:
                if name in self.low_steps:
                    out[f"reward/{name}_vs_verifier/alarm"] = float(self.low_steps[name] >= self.patience)
                continue
            self.low_steps[name] = self.low_steps.get(name, 0) + 1 if acc < self.min_agreement else 0
            ringing = self.low_steps[name] >= self.patience
            out[f"reward/{name}_vs_verifier/alarm"] = float(ringing)
            if ringing:
                print(f"warning: step {step}: the {name} score agrees with tau2's verdict on {acc:.2f} of this step's "
                      f"(passed, failed) pairs, below reward.audit_min_agreement={self.min_agreement} for "
                      f"{self.low_steps[name]} steps: the policy may be exploiting it", file=sys.stderr)
        return out
