"""Gold-action replay through the session API, on tau2's packaged splits and the official task files."""
import json

import pytest

from envs.tau2_telecom import replay
from envs.tau2_telecom.tasks import TaskFileError, load_split, load_task_file
from tests.conftest import shared_file


def run_replay(capsys, *argv):
    code = replay.main([*argv, "--json"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    out["stderr"] = captured.err
    return code, out["summary"], out


COUNTS = ("tasks", "passed_before", "passed_after", "reward_1", "errors", "unloadable_tasks")


def counts(summary):
    """The oracle's original summary fields (the breakdowns are tested in test_expert.py)."""
    return {k: summary[k] for k in COUNTS}


def transfer_count(tasks):
    return sum(a.name == "transfer_to_human_agents" for t in tasks for a in t.evaluation_criteria.actions)


@pytest.mark.parametrize("mode", ["solo", "dual"])
@pytest.mark.parametrize("name", ["tasks_small.json", "tasks_train.json"])
def test_official_task_files_replay_to_reward_1(capsys, name, mode):
    path = shared_file(name)
    tasks = load_task_file(path, strict=True).tasks
    code, summary, out = run_replay(capsys, "--tasks", str(path), "--mode", mode)
    assert code == 0
    assert counts(summary) == {"tasks": len(tasks), "passed_before": transfer_count(tasks),
                               "passed_after": len(tasks), "reward_1": len(tasks), "errors": 0, "unloadable_tasks": 0}
    assert summary["success"] == len(tasks) and sum(g["tasks"] for g in summary["by_family"].values()) == len(tasks)
    # The shared files are the same tasks tau2 packages.
    packaged = {t.id: t for t in load_split("small" if "small" in name else "train")}
    assert {t.id for t in tasks} == set(packaged)
    assert all(t == packaged[t.id] for t in tasks)


def test_splits_have_tau2_sizes():
    assert {s: len(load_split(s)) for s in ("small", "train", "test", "base")} == {
        "small": 20, "train": 74, "test": 40, "base": 114}


@pytest.mark.slow
def test_full_2285_tasks_replay_to_reward_1(capsys):
    code, summary, out = run_replay(capsys, "--split", "full")
    assert counts(summary) == {"tasks": 2285, "passed_before": 32, "passed_after": 2285, "reward_1": 2285,
                               "errors": 0, "unloadable_tasks": 0}
    assert summary["by_family"] == {"mms_issue": {"tasks": 1984, "success": 1984, "rate": 1.0},
                                    "mobile_data_issue": {"tasks": 254, "success": 254, "rate": 1.0},
                                    "service_issue": {"tasks": 47, "success": 47, "rate": 1.0}}
    assert code == 0
    # Only transfer-to-human tasks hold their assertions before any action.
    before = [r["task_id"] for r in out["results"] if r["passed_before"]]
    assert all("contract_end_suspension" in i or "lock_sim_card_pin" in i for i in before)


def test_test_split_replays_in_dual_mode(capsys):
    code, summary, _ = run_replay(capsys, "--split", "test", "--mode", "dual")
    assert code == 0 and summary["reward_1"] == summary["tasks"] == 40


def test_broken_json_file_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "tasks.json"
    bad.write_text('[\n  {"id": "a",\n  "oops"\n]')
    assert replay.main(["--tasks", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4:1: invalid JSON" in err  # the "oops" key lacks its value where line 4 starts
    with pytest.raises(TaskFileError, match="not found"):
        load_task_file(tmp_path / "missing.json")


def test_bad_task_is_reported_and_the_rest_still_replay(tmp_path, capsys):
    good = json.loads(shared_file("tasks_small.json").read_text())[:3]
    broken = dict(good[1], id="broken-task")
    broken["evaluation_criteria"] = {"actions": "not a list"}
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([good[0], broken, good[2]]))
    code, summary, out = run_replay(capsys, "--tasks", str(path))
    assert code == 1  # not silent: the run is marked failed
    assert summary["tasks"] == 2 and summary["reward_1"] == 2 and summary["unloadable_tasks"] == 1
    assert "task #1 (id 'broken-task')" in out["unloadable"][0] and "evaluation_criteria" in out["unloadable"][0]
    assert "skipped" in out["stderr"] and "broken-task" in out["stderr"]
    with pytest.raises(TaskFileError, match="task #1"):
        load_task_file(path, strict=True)


def test_text_output_lists_each_task_the_table_and_summary(capsys):
    assert replay.main(["--split", "small", "--limit", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 + 3 + 1 and all(line.startswith("ok") for line in lines[:3])
    assert lines[3].split() == ["group", "value", "tasks", "success", "rate"]
    assert lines[4].split() == ["family", "mobile_data_issue", "3", "3", "1.000"]
    assert lines[5].split() == ["faults", "1", "3", "3", "1.000"]
    assert lines[-1] == ("tasks=3 passed_before=0 passed_after=3 reward_1=3 errors=0 unloadable_tasks=0 "
                         "success=3 success_rate=1.0")
