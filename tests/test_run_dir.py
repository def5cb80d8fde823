"""The run directory: snapshot with secrets redacted, refusing to overwrite a run, checkpoint pointer."""
import json

import pytest

from rl.config import load_config
from rl.run_dir import RunDir


def test_snapshot_metrics_and_checkpoint_pointer(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}/run", "judge.model=openai/j", "judge.api_key=sk-secret"])
    run = RunDir(cfg)
    snapshot = (tmp_path / "run" / "config.yaml").read_text()
    assert "sk-secret" not in snapshot and "'***'" in snapshot and "openai/j" in snapshot
    assert json.loads((tmp_path / "run" / "meta.json").read_text().splitlines()[0])["git"]
    run.log_metrics(1, {"reward/mean": 0.5, "note": "text is kept in JSONL only"})
    assert run.metrics() == [{"step": 1, "reward/mean": 0.5, "note": "text is kept in JSONL only"}]
    assert run.latest_checkpoint() is None
    for step in (1, 2, 3):
        run.checkpoint_dir(step).mkdir()
        run.mark_latest(step, keep=2)
    assert run.latest_checkpoint() == (3, run.checkpoint_dir(3))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")) == ["step_2", "step_3"]
    run.close()


def test_existing_run_needs_resume(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}/run"])
    RunDir(cfg).close()
    with pytest.raises(FileExistsError, match="--resume"):
        RunDir(cfg)
    RunDir(cfg, resume=True).close()
