"""rl.evaluate: tau2's pass^k over trials, resumable episodes, and results in tau2's own format that tau2's
compute_metrics reads to the same numbers."""
import json
from dataclasses import replace

import pytest

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.tasks import load_split
from rl.eval_report import EpisodeOutcome, build_report
from rl.evaluate import main
from rl.tau2_export import tau2_results
from tests.conftest import REPO_ROOT


def _tau2_metrics(path) -> tuple[dict, float]:
    m = t2.compute_metrics(t2.Results.load(path))
    return {str(k): v for k, v in m.pass_hat_ks.items()}, m.avg_reward


def test_expert_evaluation_matches_tau2s_own_metrics(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["--agent", "expert", "--split", "test", "--limit", "4", "--trials", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"] == 4 and report["episodes"] == 8 and set(report["pass_hat_k"]) == {"1", "2"}
    pass_k, avg = _tau2_metrics(out / "tau2_results.json")
    assert pass_k == pytest.approx(report["pass_hat_k"]) and avg == pytest.approx(report["avg_reward"])
    assert report["pass_hat_k"]["1"] == 1.0 and "pass^2 1.000" in capsys.readouterr().out  # the expert solves them
    rows = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted((r["task_id"], r["trial"]) for r in rows) == sorted(
        (t.id, k) for t in load_split("test")[:4] for k in (0, 1))
    assert all(r["messages"] and r["tool_calls"] > 0 for r in rows)
    assert "| pass^k |" in (out / "report.md").read_text()
    assert (out / "report.png").stat().st_size > 10_000


def test_mixed_outcomes_give_tau2s_pass_hat_k():
    tasks = {t.id: t for t in load_split("test")[:3]}
    a, b, c = tasks
    wins = {a: [1, 1, 1], b: [1, 0, 1], c: [0, 0, 1]}  # pass^1 = (1 + 2/3 + 1/3) / 3, pass^3 = 1/3
    outcomes = [EpisodeOutcome(tid, k, float(w), bool(w), "agent_stop" if w else "context_overflow", messages=[])
                for tid, ws in wins.items() for k, w in enumerate(ws)]
    report = build_report(outcomes)
    assert report["pass_hat_k"]["1"] == pytest.approx(2 / 3) and report["pass_hat_k"]["3"] == pytest.approx(1 / 3)
    results = tau2_results(tasks, outcomes, agent="x", user="none", policy="manual", trials=3, max_steps=30,
                           max_errors=10, seed=0)
    m = t2.compute_metrics(results)
    # tau2 has no reason for an episode that never ended: it is exported as its agent_error
    assert {s.termination_reason.value for s in results.simulations} == {"agent_stop", "agent_error"}
    assert {str(k): v for k, v in m.pass_hat_ks.items()} == pytest.approx(report["pass_hat_k"])
    assert m.avg_reward == pytest.approx(report["avg_reward"])


def test_resume_runs_only_what_is_missing_and_bad_input_is_one_line(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["--agent", "oracle", "--split", "small", "--limit", "2", "--out", str(out)]) == 0
    assert main(["--agent", "oracle", "--split", "small", "--limit", "2", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["--agent", "oracle", "--split", "small", "--limit", "3", "--out", str(out), "--resume"]) == 0
    rows = (out / "episodes.jsonl").read_text().splitlines()
    assert len(rows) == 3 and len({json.loads(r)["task_id"] for r in rows}) == 3  # 2 kept + 1 new
    assert json.loads((out / "report.json").read_text())["episodes"] == 3

    broken = tmp_path / "tasks.json"
    broken.write_text("[{not json")
    assert main(["--agent", "expert", "--tasks", str(broken), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rl.evaluate: ") and "tasks.json" in err[-1]


def test_model_input_is_checked_before_anything_starts(tmp_path, capsys):
    def last_error(args) -> str:
        assert main([*args, "--split", "small", "--out", str(tmp_path / "out")]) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    empty = tmp_path / "model"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert "no weights" in last_error(["--model", str(empty)])
    run = tmp_path / "run"  # a run directory that never finished: no exported policy
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "meta.json").write_text("{}")
    assert "rl.train --resume" in last_error(["--model", str(run)])
    assert "'env.no_such_key'" in last_error(["--model", "tiny", "env.no_such_key=1"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # sampling settings mean nothing to a scripted agent
        main(["--agent", "expert", "--split", "small", "--temperature", "0.7", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):  # a scripted agent has no config to take tasks from
        main(["--agent", "expert", "--config-tasks", "train", "--out", str(tmp_path / "x")])
    assert main(["--model", "tiny", "--config-tasks", "heldout", "train.eval_tasks=0",
                 "--out", str(tmp_path / "h")]) == 2
    assert "no heldout tasks (train.eval_tasks is 0)" in capsys.readouterr().err


def test_config_tasks_are_the_split_rl_train_makes():
    from rl.config import load_config
    from rl.evaluate import _config_tasks
    from rl.runtime import split_tasks

    cfg = load_config(f"{REPO_ROOT}/configs/learn_tiny.yaml", [])
    train, _ = _config_tasks(cfg, "train")
    heldout, where = _config_tasks(cfg, "heldout")
    split = split_tasks(cfg)
    assert [t.id for t in train] == list(split.train) and [t.id for t in heldout] == list(split.heldout)
    assert len(heldout) == cfg.train.eval_tasks and not {t.id for t in train} & {t.id for t in heldout}
    assert where == "the config's heldout tasks"


def test_an_openai_endpoint_agent_through_real_http(tmp_path, capsys):
    """An OpenAI-compatible server (a scripted stub) as the agent: tools go out as OpenAI tools, its tool_calls run in
    the tau2 session, the results come back as tool messages answering its calls; tau2 scores the episode."""
    from tests.openai_stub import ScriptedOpenAI

    task = load_split("small")[0]
    gold = [(a.name, a.arguments) for a in task.evaluation_criteria.actions]  # toggle_roaming on the phone
    replies = [{"tool_calls": [("check_network_status", {})]}, {"tool_calls": gold}, {"tool_calls": [("done", {})]}]
    out = tmp_path / "eval"
    with ScriptedOpenAI(replies) as server:
        assert main(["--endpoint", server.base_url, "--served-model", "stub", "--split", "small", "--limit", "1",
                     "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pass_hat_k"] == {"1": 1.0} and report["agent"] == f"stub @ {server.base_url}"
    first, second = server.requests[0], server.requests[1]
    assert {t["function"]["name"] for t in first["tools"]} >= {"toggle_roaming", "check_network_status", "done"}
    call, result = second["messages"][-2], second["messages"][-1]
    assert call["tool_calls"][0]["function"]["name"] == "check_network_status"
    assert result["role"] == "tool" and result["tool_call_id"] == call["tool_calls"][0]["id"]
    assert "Airplane Mode" in result["content"]
    episode = json.loads((out / "episodes.jsonl").read_text())
    assert episode["tool_calls"] == 2 and episode["success"]

    # a server that is not there: one line before any episode
    assert main(["--endpoint", "http://127.0.0.1:9/v1", "--served-model", "x", "--split", "small",
                 "--out", str(tmp_path / "dead")]) == 2
    assert "--endpoint" in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(SystemExit):
        main(["--endpoint", "http://127.0.0.1:9/v1", "--split", "small", "--out", str(tmp_path / "x")])


def test_serve_builds_the_server_a_policy_was_trained_for(tmp_path, capsys):
    import torch

    from rl.models import resolve_model
    from rl.serve import main as serve

    tiny = str(resolve_model("tiny"))
    assert serve([tiny, "--port", "8123", "--name", "pol", "--dry-run", "--", "--api-key", "k"]) == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[cmd.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--chat-template") + 1].endswith("chat_template.jinja") and cmd[-2:] == ["--api-key", "k"]
    assert cmd[cmd.index("--max-model-len") + 1] == "4096"  # the config's, unless overridden (tau2's long prompt)
    assert cmd[cmd.index("--dtype") + 1] == ("auto" if torch.cuda.is_available() else "float32")
    assert serve([tiny, "rollout.max_model_len=16384", "rollout.dtype=bfloat16", "--dry-run"]) == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[cmd.index("--max-model-len") + 1] == "16384" and cmd[cmd.index("--dtype") + 1] == "bfloat16"
    assert serve([tiny, "rollout.dtype=fp8", "--dry-run"]) == 2
    assert "rollout.dtype" in capsys.readouterr().err
    assert serve([tiny, "rollout.max_model_lenn=1", "--dry-run"]) == 2
    assert "rollout.max_model_lenn" in capsys.readouterr().err
    run = tmp_path / "run"  # a run that never finished has nothing to serve
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "meta.json").write_text("{}")
    assert serve([str(run)]) == 2 and "rl.train --resume" in capsys.readouterr().err


def test_the_served_tool_parser_reads_what_the_training_template_writes():
    """rl.serve's contract: vLLM's hermes parser turns the assistant text our chat template renders (what the policy
    was trained to write) back into the same OpenAI tool calls."""
    from transformers import AutoTokenizer
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

    from rl.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("tiny"))
    calls = [("check_network_status", {}), ("toggle_roaming", {"on": True})]
    message = {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}} for i, (n, a) in enumerate(calls)]}
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}, message], tokenize=False)
    written = rendered.split("<|im_start|>assistant\n")[-1].split("<|im_end|>")[0]
    parsed = Hermes2ProToolParser(tok).extract_tool_calls(written, request=None)
    assert parsed.tools_called and parsed.content.strip() == "Let me check."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in parsed.tool_calls] == calls


def test_an_episode_cut_by_the_context_limit_says_so():
    from actors.rollout_worker import context_overflow
    from envs.tau2_telecom.session import EvalResult
    from rl.contracts import EpisodeRecord, Score, Trajectory
    from rl.model_agent import outcome

    unfinished = EvalResult(task_id="t1", reward=0.0, success=False, termination=None, reward_basis=[],
                            env_assertions=[], actions=[], communicate=[], nl_assertions=None, db_match=None,
                            turns=0, tool_errors=0, rejected_calls=0,
                            note="episode ended by nothing (still running): tau2 scores it 0")
    traj = Trajectory(task_id="t1", group=0, messages=[], eval=context_overflow(unfinished, 4090, 0, 4096),
                      token_ids=list(range(4090)), loss_mask=[0] * 4090, turns=0, truncated=True)
    row = outcome(traj, trial=2)  # rl.evaluate: a failure by cause
    assert (row.trial, row.success, row.failure) == (2, False, "context_overflow")
    assert "4090 tokens after 0 turns" in row.note and "rollout.max_model_len = 4096" in row.note
    record = EpisodeRecord.of(3, traj, Score(0.0, {}))  # rl.train's trajectories.jsonl: the reason, not a failure
    assert (record.termination, record.failure) == ("context_overflow", None) and "4090 tokens" in record.note
    finished = replace(traj, truncated=False, eval=replace(unfinished, termination="agent_stop", note=None))
    assert outcome(finished, trial=0).failure is None


def test_a_dead_or_hung_engine_stops_with_one_line_and_keeps_the_finished_episodes(tmp_path, capsys, monkeypatch):
    from contextlib import contextmanager

    import rl.evaluate
    from rl.actor_calls import ActorFailed

    calls = []

    @contextmanager
    def player(*_):
        def play(pairs):  # the first episode finishes, then the engine stops answering
            calls.append(pairs)
            (task, trial), *_ = pairs
            yield EpisodeOutcome(task.id, trial, 1.0, True, "agent_stop", messages=[])
            raise ActorFailed("the rollout workers finished no episode within rollout.timeout_s = 5 s")
        yield play

    monkeypatch.setattr(rl.evaluate, "_player", player)
    out = tmp_path / "eval"
    assert main(["--agent", "oracle", "--split", "small", "--limit", "3", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "rl.evaluate: stopped: the rollout workers finished no episode within rollout.timeout_s = 5 s" in err
    assert "1 episodes kept" in err and len((out / "episodes.jsonl").read_text().splitlines()) == 1
