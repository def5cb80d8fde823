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


def test_rejection_sampling_reads_evaluations_of_a_model(tmp_path):
    """rl.evaluate --model episodes (sampling the training tasks k times) are read like a run's trajectories; an
    evaluation without the policy's own conversation (a scripted agent's) is an error naming the line."""
    from envs.tau2_telecom.tasks import load_split
    from rl.eval_report import EpisodeOutcome

    train = load_split("small")[0].id
    chat = _row(train, 1, "fix")["messages"]
    outcomes = [EpisodeOutcome(train, k, float(ok), ok, "agent_stop", messages=[{"role": "tau2"}],
                               chat_messages=chat[:2] + [{"role": "assistant", "content": text}])
                for k, (ok, text) in enumerate([(True, "fix"), (True, "fix"), (True, "other fix"), (False, "x")])]
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "episodes.jsonl").write_text("".join(json.dumps(o.row()) + "\n" for o in outcomes))
    demos = rollout_demonstrations(_cfg(tmp_path, "env.split=small"), [str(evaluation)])
    assert (demos.considered, demos.failed) == (4, 1)
    assert [m[-1]["content"] for m, _ in demos.conversations] == ["fix", "other fix"]
    capped = rollout_demonstrations(_cfg(tmp_path, "env.split=small"), [str(evaluation)], per_task=1)
    assert [m[-1]["content"] for m, _ in capped.conversations] == ["fix"]
    scripted = EpisodeOutcome(train, 0, 1.0, True, "agent_stop", messages=[{"role": "tau2"}])
    (evaluation / "episodes.jsonl").write_text(json.dumps(outcomes[0].row()) + "\n" + json.dumps(scripted.row()))
    with pytest.raises(ValueError, match=r"episodes.jsonl:2: no 'chat_messages'"):
        rollout_demonstrations(_cfg(tmp_path, "env.split=small"), [str(evaluation)])


def test_a_per_task_cap_keeps_the_shortest_passes_of_every_round_when_asked(tmp_path):
    """--prefer shortest: of a task's distinct passes, across every round's samples, the cap keeps those with the
    fewest agent turns (then characters; ties: the first found), in the order found; failures are never kept; the
    default keeps the first found; an unknown preference is an error naming it."""
    from envs.tau2_telecom.tasks import load_split
    from rl.eval_report import EpisodeOutcome

    a, b = (t.id for t in load_split("small")[:2])
    head = _row(a, 1, "")["messages"][:2]

    def episode(task, k, ok, *turns):
        chat = head + [{"role": "assistant" if i % 2 == 0 else "tool", "content": t} for i, t in enumerate(turns)]
        return EpisodeOutcome(task, k, float(ok), ok, "agent_stop", messages=[{"role": "tau2"}], chat_messages=chat)

    rounds = [[episode(a, 0, True, "check", "ok", "check again", "ok", "fix"),  # 3 turns
               episode(a, 1, True, "check", "ok", "fix it now"),                # 2 turns, longer text
               episode(b, 0, True, "x", "ok", "y", "ok", "z"),
               episode(a, 2, False, "fix")],                                    # the shortest, but failed
              [episode(a, 0, True, "check", "ok", "fix"),                       # 2 turns, shortest text: round 2
               episode(b, 0, True, "x", "ok", "y", "ok", "z")]]                 # the same conversation again
    sources = []
    for r, outcomes in enumerate(rounds):
        folder = tmp_path / f"sample{r + 1}"
        folder.mkdir()
        (folder / "episodes.jsonl").write_text("".join(json.dumps(o.row()) + "\n" for o in outcomes))
        sources.append(str(folder))
    cfg = _cfg(tmp_path, "env.split=small")

    def last_turns(demos):
        return [m[-1]["content"] for m, _ in demos.conversations]

    assert last_turns(rollout_demonstrations(cfg, sources, per_task=2, prefer="shortest")) == ["fix it now", "z",
                                                                                               "fix"]
    assert last_turns(rollout_demonstrations(cfg, sources, per_task=1, prefer="shortest")) == ["z", "fix"]
    assert last_turns(rollout_demonstrations(cfg, sources, per_task=2)) == ["fix", "fix it now", "z"]
    with pytest.raises(ValueError, match="unknown preference 'longest'"):
        rollout_demonstrations(cfg, sources, per_task=2, prefer="longest")


def test_a_limit_draws_the_teachers_demonstrations_alike_with_or_without_rollouts(tmp_path):
    """The few demonstrations of a warm start stay the same when the policy's own successes are added to them."""
    from transformers import AutoTokenizer

    from envs.tau2_telecom.tasks import load_split
    from rl.demonstrations import demonstration_rows
    from rl.models import resolve_model

    cfg = _cfg(tmp_path, "env.split=small", "env.mode=solo", "env.prompt=minimal", "rollout.max_model_len=8192")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny", {}))
    run = tmp_path / "grpo"
    run.mkdir()
    rows = [_row(t.id, 1, f"fix {i}") for i, t in enumerate(load_split("small")[:3])]
    (run / "trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    alone = demonstration_rows(cfg, tokenizer, "expert", limit=5)
    both = demonstration_rows(cfg, tokenizer, "expert", [str(run)], limit=5)
    assert len(alone) == 5 and both[:5] == alone and len(both) == 8
    assert len(demonstration_rows(cfg, tokenizer, None, [str(run)], limit=2)) == 2
