"""report.png from metrics.jsonl: reward, training and held-out success, per-component rewards (with the on-policy
audit of learned / judged scores), step-time breakdown."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TIME_KEYS = ("time/generate", "time/env", "time/reward", "time/train", "time/sync")


def write_report(metrics: list[dict], path: str | Path) -> Path:
    evals = [m for m in metrics if "eval/success" in m]  # step 0 (before training) and every evaluated step
    metrics = [m for m in metrics if m["step"] > 0]
    steps = [m["step"] for m in metrics]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0][0]
    ax.plot(steps, [m.get("reward/mean", 0) for m in metrics], marker="o", label="reward (mixed)")
    ax.plot(steps, [m.get("reward/tau2", 0) for m in metrics], marker=".", label="tau2 reward")
    ax.set_title("reward")
    ax.legend()
    ax = axes[0][1]
    ax.plot(steps, [m.get("success_rate", 0) for m in metrics], marker="o", color="green", label="training episodes")
    if evals:
        n = int(evals[-1].get("eval/tasks", 0))
        ax.plot([m["step"] for m in evals], [m["eval/success"] for m in evals], marker="s", color="purple",
                label=f"held-out, greedy ({n} tasks)")
        passk = sorted((k for k in evals[-1] if k.startswith("eval/pass^")), key=lambda k: int(k.split("^")[1]))
        if passk:
            ax.plot([m["step"] for m in evals], [m.get(passk[-1], 0) for m in evals], marker="^", color="orange",
                    linestyle="--", label=f"held-out, {passk[-1].split('/')[1]}")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("success rate (tau2)")
    ax.legend()
    ax = axes[1][0]
    for key in ("reward/env_assertions", "reward/actions", "reward/penalty"):
        ax.plot(steps, [m.get(key, 0) for m in metrics], marker=".", label=key.split("/")[1])
    for name in ("rm", "judge"):  # the on-policy audit (rl/reward_audit.py): agreement with tau2's verdict
        key = f"reward/{name}_vs_verifier/pairwise_acc"
        audited = [m for m in metrics if key in m]
        if audited:
            ax.plot([m["step"] for m in audited], [m[key] for m in audited], linestyle="--", marker="x",
                    label=f"{name} agrees with tau2 (pairs)")
    ax.set_title("reward components (left), tool calls per episode (right)")
    ax.legend(loc="upper left")
    calls = ax.twinx()  # repeated calls farming partial credit would show as a rise here
    calls.plot(steps, [m.get("episode/tool_calls", 0) for m in metrics], color="gray", linestyle=":")
    ax = axes[1][1]
    bottom = [0.0] * len(steps)
    for key in TIME_KEYS:
        vals = [m.get(key, 0.0) for m in metrics]
        ax.bar(steps, vals, bottom=bottom, label=key.split("/")[1])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title("step time (s)")
    ax.legend()
    for a in axes.flat:
        a.set_xlabel("step")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


if __name__ == "__main__":
    run = Path(sys.argv[1])
    from rl.run_dir import read_jsonl

    print(write_report(read_jsonl(run / "metrics.jsonl"), run / "report.png"))
