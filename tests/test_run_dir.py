"""The run directory: snapshot with secrets redacted, refusing to overwrite a run, checkpoint pointer."""
import json

import pytest

from rl.config import load_config
from rl.run_dir import RunDir, read_jsonl


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
        (run.begin_checkpoint(step) / "shard").write_text(str(step))
        run.commit_checkpoint(step, keep=2)
    assert run.latest_checkpoint() == (3, run.checkpoint_dir(3))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")) == ["step_2", "step_3"]
    # A save killed half-way: its folder stays .partial, `latest` still names step 3, which is complete.
    (run.begin_checkpoint(4) / "shard").write_text("torn")
    assert run.latest_checkpoint() == (3, run.checkpoint_dir(3))
    assert (run.checkpoint_dir(3) / "shard").read_text() == "3"
    # The next complete save with keep=1 keeps only itself and clears the torn folder.
    (run.begin_checkpoint(5) / "shard").write_text("5")
    run.commit_checkpoint(5, keep=1)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["latest", "step_5"]
    run.close()


def test_existing_run_needs_resume(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}/run"])
    RunDir(cfg).close()
    with pytest.raises(FileExistsError, match="--resume"):
        RunDir(cfg)
    RunDir(cfg, resume=True).close()


def test_jsonl_reader_skips_a_torn_last_line_only(tmp_path, capsys):
    from rl.run_dir import read_jsonl

    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path) == []
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "rew')  # the writer was killed mid-line
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    assert "metrics.jsonl:3" in capsys.readouterr().err
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_jsonl(path)


def test_trajectory_rows_round_trip_as_episode_records(tmp_path):
    from envs.tau2_telecom.session import EvalResult
    from rl.contracts import EpisodeRecord, Score, Trajectory

    evaluation = EvalResult(task_id="t1", reward=1.0, success=True, termination="agent_stop", reward_basis=[],
                            env_assertions=[], actions=[], communicate=[], nl_assertions=None, db_match=None,
                            turns=2, tool_errors=0, rejected_calls=1, note="evaluation failed: judge down",
                            failure="eval_failed")
    traj = Trajectory(task_id="t1", group=3, messages=[{"role": "user", "content": "hi"}], eval=evaluation,
                      token_ids=[1, 2, 3, 4], loss_mask=[0, 1, 1, 0], turns=2, policy_version=5)
    run = RunDir(load_config(None, [f"run_dir={tmp_path}/run"]))
    run.log_trajectories(7, [traj], [Score(0.9, {"success": 1.0})])
    run.close()
    from rl.run_dir import read_jsonl

    (row,) = read_jsonl(tmp_path / "run" / "trajectories.jsonl")
    rec = EpisodeRecord.from_row(row)
    assert (rec.step, rec.task_id, rec.group, rec.reward, rec.termination) == (7, "t1", 3, 0.9, "agent_stop")
    assert (rec.tokens, rec.generated_tokens, rec.policy_version, rec.turns) == (4, 2, 5, 2)
    assert (rec.failure, rec.note) == ("eval_failed", "evaluation failed: judge down")  # the reason is kept
    with pytest.raises(ValueError, match="task_id"):
        EpisodeRecord.from_row({"components": {}, "messages": []})


def test_resume_keeps_exactly_the_rows_up_to_the_checkpoint(tmp_path, capsys):
    cfg = load_config(None, [f"run_dir={tmp_path}/run"])
    run = RunDir(cfg)
    for step in range(0, 6):  # steps 4-5 ran after the last checkpoint (3), then the driver was killed
        run.log_metrics(step, {"reward/mean": step / 10})
        with open(tmp_path / "run" / "trajectories.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "task_id": f"t{step}", "components": {}, "messages": []}) + "\n")
        if step == 3:
            run.begin_checkpoint(3)
            run.commit_checkpoint(3, keep=2)
    run.close()
    with open(tmp_path / "run" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "reward/me')  # killed mid-write
    resumed = RunDir(cfg, resume=True)
    assert [r["step"] for r in resumed.metrics()] == [0, 1, 2, 3]
    assert [r["task_id"] for r in read_jsonl(tmp_path / "run" / "trajectories.jsonl")] == ["t0", "t1", "t2", "t3"]
    resumed.log_metrics(4, {"reward/mean": 0.4})  # the repeated step is logged once
    assert [r["step"] for r in resumed.metrics()] == [0, 1, 2, 3, 4]
    resumed.close()
    # Without any checkpoint a resume starts from step 0: only the starting weights' evaluation (step 0) stands.
    cfg2 = load_config(None, [f"run_dir={tmp_path}/run2"])
    first = RunDir(cfg2)
    first.log_metrics(0, {"eval/success": 0.1})
    first.log_metrics(1, {"reward/mean": 0.2})
    first.close()
    again = RunDir(cfg2, resume=True)
    assert again.metrics() == [{"step": 0, "eval/success": 0.1}]
    # A live run rewinds the same way when its learner is rebuilt (rl.train's recover_learner).
    again.log_metrics(1, {"reward/mean": 0.3})
    assert again.rewind() == 0 and again.metrics() == [{"step": 0, "eval/success": 0.1}]
    again.log_metrics(1, {"reward/mean": 0.4})
    again.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "run2" / "metrics.jsonl")] == [0, 1]
