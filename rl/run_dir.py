"""The run directory: config snapshot, git revision, metrics (JSONL + TensorBoard), trajectories, checkpoints.

    runs/<name>/
      config.yaml        the resolved config (API keys redacted)
      meta.json          git revision, start time, host, command line
      metrics.jsonl      one line per step (a resume first drops the rows after its checkpoint)
      trajectories.jsonl every training episode: task, reward, components, conversation
      eval_trajectories.jsonl  every held-out evaluation episode (kept apart: never training or RM data)
      tb/                TensorBoard event files
      checkpoints/step_N learner shards + driver state; `latest` names the newest complete one
      report.png         reward, training and held-out success, components, step-time breakdown
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rl.config import Config, redact_overrides, redacted_yaml
from rl.contracts import EpisodeRecord, Score, Trajectory


def episode_file(source: str | Path, flag: str) -> Path:
    """The episodes of `source`: a run's trajectories.jsonl (rl.train) or an rl.evaluate folder's episodes.jsonl
    (a folder holding either, or the file itself); a ValueError that names `flag` when there is none."""
    path = Path(source)
    if path.is_dir():
        path = next((path / n for n in ("trajectories.jsonl", "episodes.jsonl") if (path / n).is_file()), path)
    if not path.is_file():
        raise ValueError(f"{flag} {source}: no trajectories.jsonl (rl.train) or episodes.jsonl (rl.evaluate "
                         "--model, rl.rft's sample<r>/) there")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file this package wrote (metrics, trajectories); [] if it does not exist. A torn last line
    (the writer was killed mid-write) is skipped; a bad line anywhere else is an error naming file:line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if lineno == len(lines):
                print(f"warning: {path}:{lineno}: skipped a torn last line", file=sys.stderr)
                break
            raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
    return rows


def git_revision() -> str:
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunDir:
    def __init__(self, cfg: Config, resume: bool = False):
        self.path = Path(cfg.run_dir)
        if self.path.exists() and any(self.path.iterdir()) and not resume:
            raise FileExistsError(f"{self.path} already holds a run; pass --resume to continue it, "
                                  f"or choose another run_dir=...")
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (self.path / "config.yaml").write_text(redacted_yaml(cfg))
        meta = {"git": git_revision(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(),
                "argv": redact_overrides(sys.argv), "resumed": resume}
        with open(self.path / "meta.json", "a") as fh:
            fh.write(json.dumps(meta) + "\n")
        self.tb = self._tensorboard(self._rewind_logs() if resume else None)

    LOGS = ("metrics.jsonl", "trajectories.jsonl", "eval_trajectories.jsonl")

    def _tensorboard(self, kept: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides the events a resumed run writes again (those after the checkpoint)
        return SummaryWriter(str(self.path / "tb"), purge_step=None if kept is None else kept + 1)

    def rewind(self) -> int:
        """Back to the latest complete checkpoint in a live run (the learner was rebuilt from it): logs as on resume."""
        kept = self._rewind_logs()
        self.tb.close()
        self.tb = self._tensorboard(kept)
        return kept

    def _rewind_logs(self) -> int:
        """On resume, keep exactly the rows the checkpoint's weights stand for: every step up to the latest complete
        checkpoint's, so the steps the run repeats are logged once; step 0 (the starting weights' evaluation) always
        stays. Each file is rewritten atomically, and a torn last line (a kill mid-write) goes with it. Returns the
        step kept."""
        found = self.latest_checkpoint()
        step = found[0] if found else 0
        for name in self.LOGS:
            path = self.path / name
            if not path.exists():
                continue
            rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, path)
        return step

    def log_metrics(self, step: int, metrics: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, **metrics}) + "\n")
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def log_trajectories(self, step: int, trajectories: list[Trajectory], scores: list[Score],
                         file: str = "trajectories.jsonl") -> None:
        with open(self.path / file, "a") as fh:
            for t, s in zip(trajectories, scores):
                fh.write(json.dumps(EpisodeRecord.of(step, t, s).to_row()) + "\n")

    def metrics(self) -> list[dict]:
        return read_jsonl(self.path / "metrics.jsonl")

    # -- checkpoints
    def checkpoint_dir(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step_{step}"

    def begin_checkpoint(self, step: int) -> Path:
        """An empty folder to save step's checkpoint into; commit_checkpoint makes it step_N. A kill while saving
        leaves only a `.partial` folder that nothing reads and the next commit removes."""
        tmp = self.path / "checkpoints" / f"step_{step}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit_checkpoint(self, step: int, keep: int) -> None:
        """Rename the saved folder to step_N, point `latest` at it, then prune: the newest `keep` complete
        checkpoints stay, and `latest`'s is never deleted. Each of the three is atomic or idempotent, so a kill
        between them leaves `latest` naming a complete checkpoint."""
        final = self.checkpoint_dir(step)
        shutil.rmtree(final, ignore_errors=True)  # a step saved again after a resume from an earlier checkpoint
        os.replace(self.path / "checkpoints" / f"step_{step}.partial", final)
        tmp = self.path / "checkpoints" / "latest.tmp"
        tmp.write_text(str(step))
        os.replace(tmp, self.path / "checkpoints" / "latest")  # atomic: a crash never leaves a bad pointer
        complete = sorted(int(p.name[5:]) for p in (self.path / "checkpoints").glob("step_*") if p.name[5:].isdigit())
        for old in complete[:-keep]:
            if old != step:
                shutil.rmtree(self.checkpoint_dir(old), ignore_errors=True)
        for stale in (self.path / "checkpoints").glob("step_*.partial"):
            shutil.rmtree(stale, ignore_errors=True)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        pointer = self.path / "checkpoints" / "latest"
        if not pointer.exists():
            return None
        step = int(pointer.read_text().strip())
        return step, self.checkpoint_dir(step)

    def close(self) -> None:
        self.tb.close()
