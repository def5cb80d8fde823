"""What rl.sft learns from: teacher demonstrations on the training tasks only, passed episodes only, a policy's own
successes from trajectories.jsonl, and clear errors for an empty selection."""
import json

import pytest

from rl.config import load_config
from rl.demonstrations import rollout_demonstrations, teacher_demonstrations
from rl.sft import run_sft


def _cfg(tmp_path, *overrides):
    return load_config(None, [f"run_dir={tmp_path}/run", "env.prompt=compact", *overrides])


@pytest.mark.parametrize("teacher", ["oracle", "expert"])
def test_teachers_demonstrate_on_the_training_split_and_only_passed_episodes_are_kept(tmp_path, teacher):
    demos = teacher_demonstrations(_cfg(tmp_path, "env.split=small", "env.mode=solo"), teacher)
    assert demos.considered == 20 and len(demos.conversations) + demos.failed == 20
    assert len(demos.conversations) >= 19  # both solve (almost) every single-fault task
    messages, tools = demos.conversations[0]
    assert messages[0]["role"] == "system" and any(m["role"] == "assistant" for m in messages) and tools


def test_unknown_teacher_and_empty_selection_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown teacher 'gpt'"):
        teacher_demonstrations(_cfg(tmp_path), "gpt")
    with pytest.raises(ValueError, match="nothing to learn from"):
        run_sft(_cfg(tmp_path), epochs=1, batch_size=1, lr=None, out=tmp_path / "m", teacher=None, rollouts=None)


def _row(task_id, success, text):
    return {"step": 1, "task_id": task_id, "group": 0, "reward": float(success),
            "components": {"success": float(success)},
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                         {"role": "assistant", "content": text}]}


def test_rejection_sampling_keeps_distinct_successes_on_training_tasks_only(tmp_path):
    from envs.tau2_telecom.tasks import load_split

    train, held_out = load_split("small")[0].id, load_split("test")[0].id
    run = tmp_path / "grpo"
    run.mkdir()
    rows = [_row(train, 1, "fix"), _row(train, 1, "fix"), _row(train, 0, "guess"), _row(held_out, 1, "fix")]
    (run / "trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    demos = rollout_demonstrations(_cfg(tmp_path, "env.split=small"), [str(run)])
    assert (demos.considered, demos.failed, len(demos.conversations)) == (3, 1, 1)  # held-out row never counted
    messages, tools = demos.conversations[0]
    assert messages[-1]["content"] == "fix" and {t["function"]["name"] for t in tools} >= {"done"}
    with pytest.raises(ValueError, match="no trajectories.jsonl"):
        rollout_demonstrations(_cfg(tmp_path), [str(tmp_path / "nowhere")])
