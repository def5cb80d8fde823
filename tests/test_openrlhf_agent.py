"""rl/tools/openrlhf_agent.py against OpenRLHF 0.11.2's own code: its plugin loader, its multi-turn executor loop
and its rollout -> Experience conversion. The fast tests play a scripted policy (the oracle's gold turns, or garbage)
through OpenRLHF's executor in place of vLLM; the slow test runs OpenRLHF's real vLLM rollout actor on CPU."""
from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

# Skip only when OpenRLHF is absent; installed but not importable (a missing small dep) must fail, not skip.
from tests.conftest import REPO_ROOT, cleanup_vllm_shm, missing

if importlib.util.find_spec("openrlhf") is None:
    missing("openrlhf not installed (make install adds it with --no-deps)", module=True)

PLUGIN = Path(REPO_ROOT) / "rl" / "tools" / "openrlhf_agent.py"
SMALL_CONFIG = "env:\n  mode: solo\n  split: small\n  prompt: compact\n"


@pytest.fixture(scope="module")
def plugin():
    """The plugin loaded exactly as OpenRLHF's trainer loads --agent_func_path (vllm_engine._load_agent_executor)."""
    from openrlhf.trainer.ray.vllm_engine import _load_agent_executor

    return SimpleNamespace(executor=_load_agent_executor(str(PLUGIN)))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from rl.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("tiny"))


@pytest.fixture
def config(tmp_path, monkeypatch):
    """Point the plugin at a telerl YAML config (what a user sets TELERL_CONFIG to)."""
    def write(text: str) -> str:
        path = tmp_path / f"telerl_{abs(hash(text))}.yaml"
        path.write_text(text)
        monkeypatch.setenv("TELERL_CONFIG", str(path))
        monkeypatch.delenv("TELERL_OVERRIDES", raising=False)
        return str(path)
    return write


@pytest.fixture(scope="module")
def small_rows(tmp_path_factory):
    """`python -m rl.tools.openrlhf_agent make-dataset` on the small split (in-process main())."""
    from rl.tools.openrlhf_agent import main

    out = tmp_path_factory.mktemp("ds") / "small.jsonl"
    main(["make-dataset", "--out", str(out), "env.split=small", "env.prompt=compact"])
    return [json.loads(line) for line in out.read_text().splitlines()]


def task_of(row):
    from envs.tau2_telecom.tasks import load_split

    label = json.loads(row["label"])
    return next(t for t in load_split(label["split"]) if t.id == label["task_id"])


class ScriptedPolicy:
    """Stands in for OpenRLHF's vLLM engine (`await llm_engine.generate(token_ids, params, multi_modal_data=...)`)
    and writes the given turns: each one's token ids plus the end-of-turn token, cut at params.max_tokens like
    vLLM (finish_reason "length", no end token). `text` leaves the end token out, as vLLM does."""

    def __init__(self, tokenizer, turns):
        self.tok, self.turns, self.prompts = tokenizer, list(turns), []

    async def generate(self, token_ids, params, multi_modal_data=None):
        self.prompts.append(list(token_ids))
        text = self.turns.pop(0) if self.turns else "Goodbye."
        ids = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        finish = "stop"
        if len(ids) > params.max_tokens:
            ids, finish = ids[:params.max_tokens], "length"
            text = self.tok.decode(ids, skip_special_tokens=False)
        out = SimpleNamespace(token_ids=ids, text=text, finish_reason=finish, logprobs=None)
        return SimpleNamespace(outputs=[out])


def run_episode(executor, row, turns, tokenizer, max_length=32768):
    """One sample through OpenRLHF's MultiTurnAgentExecutor.execute, as RolloutRayActor.generate_responses calls it."""
    from vllm import SamplingParams

    policy = ScriptedPolicy(tokenizer, turns)
    # What SamplesGenerator._dispatch_prompts_to_vllm builds (max_new_tokens unset = dynamic).
    params = SamplingParams(temperature=1.0, max_tokens=None, min_tokens=1, skip_special_tokens=False)
    prompt = tokenizer.apply_chat_template(row["input"], tokenize=False, add_generation_prompt=True)
    response = asyncio.run(executor.execute(prompt, row["label"], params, max_length, tokenizer, policy))
    return response, policy


def to_experiences(responses, max_len=32768):
    """OpenRLHF's own response -> Experience conversion, then the batch merge and split its trainer does."""
    from openrlhf.trainer.ppo_utils.experience import Experience, split_experience_batch
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    gen = SamplesGenerator.__new__(SamplesGenerator)  # the conversion uses no generator state
    exps = [gen._process_response_into_experience(r, max_len=max_len) for r in responses]
    merged = Experience.concat_experiences(exps, pad_token_id=0)
    return exps, split_experience_batch(merged)


# --------------------------------------------------------------------------- contract


def test_plugin_satisfies_openrlhf_agent_contract(plugin):
    import inspect

    from openrlhf.utils.agent import AgentExecutorBase, AgentInstanceBase, MultiTurnAgentExecutor

    ex = plugin.executor
    assert isinstance(ex, AgentExecutorBase) and isinstance(ex, MultiTurnAgentExecutor)
    agent_cls = ex.agent_instance_cls
    assert issubclass(agent_cls, AgentInstanceBase) and not inspect.isabstract(agent_cls)
    for name, base in (("reset", AgentInstanceBase.reset), ("step", AgentInstanceBase.step)):
        ours = getattr(agent_cls, name)
        assert inspect.iscoroutinefunction(ours)
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(base).parameters)
    assert (list(inspect.signature(type(ex).execute).parameters)
            == list(inspect.signature(AgentExecutorBase.execute).parameters))


def test_make_dataset_rows(small_rows):
    from envs.tau2_telecom.tasks import split_ids

    assert 0 < len(small_rows) <= len(split_ids("small"))  # solo mode keeps the tasks that have a ticket
    for row in small_rows:
        label = json.loads(row["label"])
        assert label["split"] == "small" and label["task_id"] in split_ids("small")
        assert [m["role"] for m in row["input"]] == ["system", "user"]
        assert row["input"][1]["content"].startswith("Ticket: ")


# --------------------------------------------------------------------------- episodes


def test_oracle_episodes_score_one_through_openrlhf_executor(plugin, tokenizer, small_rows, config):
    from envs.tau2_telecom.oracle import oracle_turns

    config(SMALL_CONFIG)
    responses = []
    for row in small_rows[:3]:
        turns = oracle_turns(task_of(row), "solo")
        resp, policy = run_episode(plugin.executor, row, turns, tokenizer)
        logs = resp["extra_logs"]
        assert resp["reward"] == pytest.approx(1.0) and resp["scores"] == pytest.approx(1.0), logs
        assert logs["reward/tau2"] == 1.0 and logs["reward/success"] == 1.0 and logs["reward/checks"] == 1.0
        assert logs["episode/turns"] == len(turns) and logs["episode/scored"] == 1.0
        assert logs["episode/context_exhausted"] == 0.0 and logs["reward/malformed_calls"] == 0.0
        assert not resp["truncated"] and len(resp["action_ranges"]) == len(turns)
        # The token stream is the chat template's rendering of the whole conversation, tools included ...
        ids = resp["observation_tokens"]
        text = tokenizer.decode(ids, skip_special_tokens=False)
        opening = tokenizer.decode(ids[:resp["action_ranges"][0][0]], skip_special_tokens=False)
        assert "<tools>" in opening and '"name": "done"' in opening  # reset renders the tool schemas
        # ... and each action range holds exactly the policy's turn and its end-of-turn token.
        for (start, end), turn in zip(resp["action_ranges"], turns):
            assert tokenizer.decode(ids[start:end], skip_special_tokens=False) == turn + tokenizer.eos_token
        # The last generation saw everything before its own turn.
        assert tokenizer.decode(policy.prompts[-1], skip_special_tokens=False) == text[: -len(
            turns[-1] + tokenizer.eos_token)]
        responses.append(resp)
    exps, split = to_experiences(responses)
    assert len(split) == 3
    assert [e.info["reward/tau2"].item() for e in split] == [1.0, 1.0, 1.0]
    assert all(e.rewards.item() == 1.0 for e in exps)
    assert {k for k in exps[0].info} >= {"reward", "score", "reward/checks", "reward/total", "episode/turns"}


def test_whole_conversation_matches_a_fresh_render(plugin, tokenizer, small_rows, config):
    """Prefix stability end to end: the incremental token stream equals rendering the final conversation once."""
    from envs.tau2_telecom.oracle import oracle_turns

    config(SMALL_CONFIG)
    row = small_rows[0]
    task = task_of(row)
    turns = oracle_turns(task, "solo")
    resp, _ = run_episode(plugin.executor, row, turns[:-1] + ["Let me check that for you."], tokenizer)
    # Solo mode: plain text ends the episode (tau2: agent_error) -> reward 0, still scored.
    assert resp["reward"] == 0.0 and resp["extra_logs"]["episode/scored"] == 1.0
    assert resp["extra_logs"]["reward/actions"] == pytest.approx(1.0)  # every gold action was performed
    from rl.tools.openrlhf_agent import current_runtime

    session = current_runtime().new_session()
    first = session.reset(task, "solo")
    messages = list(first.messages)
    for turn in turns[:-1]:
        obs = session.step(turn)
        messages += [{"role": "assistant", "content": turn}] + obs.messages
    messages.append({"role": "assistant", "content": "Let me check that for you."})
    full = tokenizer.apply_chat_template(messages, tools=first.tools, tokenize=False)
    assert tokenizer.decode(resp["observation_tokens"], skip_special_tokens=False) + "\n" == full


def test_garbage_actions_give_error_feedback_and_premature_done_scores_zero(tokenizer, small_rows, config):
    """The agent class driven the way MultiTurnAgentExecutor drives it (no executor: telerl's template)."""
    import rl.tools.openrlhf_agent as plugin_mod

    config(SMALL_CONFIG)
    agent = plugin_mod.TelecomAgent()
    row = small_rows[1]
    first = asyncio.run(agent.reset({"observation": "ignored", "label": row["label"]}))["observation"]
    assert first.startswith("<|im_start|>system\n") and first.endswith("<|im_start|>assistant\n")

    def step(text):
        return asyncio.run(agent.step({"observation_text": first, "action_text": text, "label": row["label"],
                                       "sampling_params": None}))

    for garbage in ("<tool_call>\n{not json at all\n</tool_call>",
                    '<tool_call>\n{"name": "no_such_tool", "arguments": {}}\n</tool_call>',
                    '<tool_call>\n{"name": "get_customer_by_phone", "arguments": {"phone": 5}}\n</tool_call>'):
        out = step(garbage)
        assert out["done"] is False and out["rewards"].item() == 0.0
        fb = out["environment_feedback"]
        assert fb.startswith("\n<|im_start|>user\n<tool_response>\n") and fb.endswith("<|im_start|>assistant\n")
        assert "error" in fb.lower() or "unknown" in fb.lower() or "invalid" in fb.lower(), fb
        assert set(out["extra_logs"]) == set(plugin_mod.current_runtime().log_keys)
    out = step('<tool_call>\n{"name": "done", "arguments": {}}\n</tool_call>')  # before fixing anything
    logs = out["extra_logs"]
    assert out["done"] is True and out["rewards"].item() == 0.0 and out["environment_feedback"] == ""
    assert logs["reward/tau2"] == 0.0 and logs["reward/success"] == 0.0 and logs["episode/scored"] == 1.0
    assert logs["reward/malformed_calls"] >= 2.0 and logs["episode/turns"] == 4.0


def test_episode_that_fills_max_length_is_scored_not_dropped(plugin, tokenizer, small_rows, config):
    """OpenRLHF stops an episode that fills max_length without calling step() (so unscored); the plugin ends it
    first, scored, like telerl's own trainer scores truncated episodes."""
    from envs.tau2_telecom.oracle import oracle_turns

    config(SMALL_CONFIG)
    row = small_rows[2]
    turns = oracle_turns(task_of(row), "solo")
    full, _ = run_episode(plugin.executor, row, turns, tokenizer)
    second_turn_at = full["action_ranges"][1][0]  # opening + first turn + its feedback
    # After the first turn fewer than MIN_TURN_TOKENS remain: the episode ends there, scored.
    resp, _ = run_episode(plugin.executor, row, turns, tokenizer, max_length=second_turn_at + 3)
    logs = resp["extra_logs"]
    assert len(resp["action_ranges"]) == 1 and len(resp["observation_tokens"]) == full["action_ranges"][0][1]
    assert logs["episode/scored"] == 1.0 and logs["episode/context_exhausted"] == 1.0
    assert resp["reward"] == 0.0 and logs["reward/tau2"] == 0.0 and logs["reward/actions"] > 0.0
    # A turn cut off by the length limit (finish_reason "length", no end token) ends and scores the episode too.
    cut, _ = run_episode(plugin.executor, row, turns, tokenizer, max_length=full["action_ranges"][0][0] + 10)
    assert cut["truncated"] and len(cut["observation_tokens"]) == full["action_ranges"][0][0] + 10
    assert cut["extra_logs"]["episode/scored"] == 1.0 and cut["reward"] == 0.0
    # An opening that does not fit is refused (OpenRLHF would cut off its start: the system prompt and tools).
    with pytest.raises(ValueError, match="too long for max_length"):
        run_episode(plugin.executor, row, turns, tokenizer, max_length=full["action_ranges"][0][0])


def test_unclosed_turn_is_closed_before_the_feedback(tokenizer, small_rows, config):
    """vLLM can stop on a token other than the template's end-of-turn (another eos id in generation_config):
    the feedback then closes the turn first, so the conversation keeps the chat format."""
    import rl.tools.openrlhf_agent as plugin_mod

    config(SMALL_CONFIG)
    tap = plugin_mod._EngineTap(None)
    token = plugin_mod._EPISODE.set(plugin_mod._EpisodeIO(tokenizer, 10**6, tap))
    try:
        agent = plugin_mod.TelecomAgent()
    finally:
        plugin_mod._EPISODE.reset(token)
    asyncio.run(agent.reset({"observation": "", "label": small_rows[0]["label"]}))
    call = '<tool_call>\n{"name": "check_status_bar", "arguments": {}}\n</tool_call>'
    new = [{"role": "tool", "tool_call_id": "x", "name": "check_status_bar", "content": "ok"}]
    tap.last = SimpleNamespace(token_ids=[5, tokenizer.eos_token_id])
    closed = agent.feedback(call, new)
    tap.last = SimpleNamespace(token_ids=[5, 6])
    assert agent.feedback(call, new) == tokenizer.eos_token + closed
    assert closed.startswith("\n<|im_start|>user\n<tool_response>\nok\n</tool_response><|im_end|>")


# --------------------------------------------------------------------------- hybrid reward


def test_gated_mixing_with_a_reward_model_follows_rl_rewards_mix(plugin, tokenizer, small_rows, config, untrained_rm):
    from envs.tau2_telecom.oracle import oracle_turns
    from rl.config import load_config
    from rl.rewards import mix
    from rl.rm.model import RewardModelScorer, normalise

    path = config(SMALL_CONFIG + f"reward:\n  mixing: gated\n  task_weight: 1.0\n  rm_path: {untrained_rm}\n"
                                 "  rm_weight: 0.4\n  rm_max_len: 256\n")
    weights = load_config(path).reward
    scorer = RewardModelScorer(untrained_rm, max_len=256)
    row = small_rows[0]
    turns = oracle_turns(task_of(row), "solo")
    for played, checks in ((turns, 1.0), (turns[-1:], 0.0)):  # solved / `done` straight away
        resp, _ = run_episode(plugin.executor, row, played, tokenizer)
        logs = resp["extra_logs"]
        assert {"reward/rm", "reward/rm_raw"} <= set(logs) and logs["reward/checks"] == checks
        expected_rm = normalise([logs["reward/rm_raw"]], "train_stats", scorer.stats)[0]
        assert logs["reward/rm"] == pytest.approx(expected_rm)
        expected = mix([checks], [logs["reward/rm"]], [None], [0], weights)[0]
        assert resp["reward"] == pytest.approx(expected) == pytest.approx(checks + 0.4 * logs["reward/rm"])
        assert 0.0 < logs["reward/rm"] < 1.0
    _, split = to_experiences([resp])
    assert "reward/rm" in split[0].info


def test_judge_keys_are_logged_even_where_a_task_has_no_nl_assertions(plugin, tokenizer, small_rows, config):
    """Experience.info needs one key set per batch: with a judge configured every episode logs judge and
    judge_applied, also on tasks without NL assertions (tau2's small split has none), where the judge is not asked."""
    from envs.tau2_telecom.oracle import oracle_turns
    from tests.openai_stub import ScriptedOpenAI

    with ScriptedOpenAI([{"content": "1: MET"}]) as server:
        config(SMALL_CONFIG + f"judge:\n  model: openai/judge\n  base_url: {server.base_url}\n"
                              "reward:\n  judge_weight: 0.5\n")
        row = small_rows[0]
        resp, _ = run_episode(plugin.executor, row, oracle_turns(task_of(row), "solo"), tokenizer)
        assert server.requests == []
    logs = resp["extra_logs"]
    assert logs["reward/judge"] == 0.0 and logs["reward/judge_applied"] == 0.0
    assert resp["reward"] == 1.0  # a missing judge component is neutral (rl/rewards.py)


def test_batch_rm_normalisation_is_rejected(config, small_rows, untrained_rm):
    import rl.tools.openrlhf_agent as plugin_mod
    from rl.config import ConfigError

    config(SMALL_CONFIG + f"reward:\n  rm_path: {untrained_rm}\n  rm_weight: 0.2\n  rm_normalization: batch\n")
    with pytest.raises(ConfigError, match="rm_normalization"):
        plugin_mod.TelecomAgent()


def test_bad_label_names_the_problem(config):
    import rl.tools.openrlhf_agent as plugin_mod

    config(SMALL_CONFIG)
    agent = plugin_mod.TelecomAgent()
    with pytest.raises(ValueError, match="no task 'nope' in split 'small'"):
        asyncio.run(agent.reset({"observation": "", "label": '{"task_id": "nope", "split": "small"}'}))
    with pytest.raises(ValueError, match="task_id"):
        asyncio.run(agent.reset({"observation": "", "label": ""}))


# --------------------------------------------------------------------------- OpenRLHF's real rollout actor


@pytest.mark.slow
def test_openrlhf_rollout_actor_runs_the_plugin_on_vllm(tmp_path, tokenizer):
    """OpenRLHF's RolloutRayActor (its vLLM AsyncLLMEngine, its generate_responses, its executor loading from
    agent_func_path) on CPU with the tiny model, as create_vllm_engines builds it except for the CPU settings
    (no GPU, float32, an explicit KV size). Dual mode so that the random model's text gets the customer's replies."""
    import ray
    from openrlhf.trainer.ray.vllm_engine import RolloutRayActor
    from vllm import SamplingParams

    from rl.config import load_config
    from rl.models import resolve_model
    from rl.tools.openrlhf_agent import make_dataset

    cfg_path = tmp_path / "dual.yaml"
    cfg_path.write_text("env:\n  mode: dual\n  user: scripted\n  split: small\n  prompt: compact\n  max_turns: 4\n")
    make_dataset(load_config(str(cfg_path)), tmp_path / "p.jsonl", limit=1)
    row = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    model = str(resolve_model("tiny"))
    # log_to_driver: the actor's and its engine process's stderr reach a failure's report (a CI run once showed only
    # vLLM's "Engine core initialization failed. See root cause above").
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": REPO_ROOT, "TELERL_CONFIG": str(cfg_path)}})
    actor = None
    try:
        actor = RolloutRayActor.options(num_cpus=1, num_gpus=0).remote(
            model=model, enforce_eager=True, worker_extension_cls="openrlhf.trainer.ray.vllm_worker_wrap.WorkerWrap",
            tensor_parallel_size=1, seed=0, distributed_executor_backend="uni", max_model_len=4096,
            enable_prefix_caching=True, dtype="float32", trust_remote_code=True, full_determinism=False,
            bundle_indices=None, num_gpus=0, enable_sleep_mode=False, kv_cache_memory_bytes=256 << 20,
            logprobs_mode="processed_logprobs", max_logprobs=1,
            agent_func_path=str(PLUGIN), remote_rm_url=None, mm_pad_token_ids=set())
        # As SamplesGenerator._dispatch_prompts_to_vllm sends it (with importance-sampling correction: logprobs=1).
        params = SamplingParams(temperature=1.0, top_p=1.0, top_k=-1, max_tokens=None, min_tokens=1,
                                skip_special_tokens=False, logprobs=1)
        prompt = tokenizer.apply_chat_template(row["input"], tokenize=False, add_generation_prompt=True)
        max_len = 3000
        outs = ray.get(actor.generate_responses.remote(prompt=prompt, label=row["label"], sampling_params=params,
                                                       max_length=max_len, hf_tokenizer=tokenizer, num_samples=2),
                       timeout=900)
    finally:
        if actor is not None:
            ray.kill(actor)
        ray.shutdown()
        cleanup_vllm_shm()

    from rl.tools.openrlhf_agent import runtime_for

    rt = runtime_for(str(cfg_path))
    session = rt.new_session()
    first = session.reset(task_of(row), "dual")
    opening = tokenizer.apply_chat_template(first.messages, tools=first.tools, tokenize=False,
                                            add_generation_prompt=True)
    assert len(outs) == 2
    for out in outs:
        ids, logs = out["observation_tokens"], out["extra_logs"]
        assert set(logs) == set(rt.log_keys) and logs["episode/scored"] == 1.0
        assert out["reward"] == logs["reward/total"] and out["reward"] == 0.0  # a random model solves nothing
        start = out["action_ranges"][0][0]
        assert tokenizer.decode(ids[:start], skip_special_tokens=False) == opening  # reset's render, tools included
        assert len(ids) <= max_len and len(out["rollout_log_probs"]) == len(ids)
        for (_, b), (c, _) in zip(out["action_ranges"], out["action_ranges"][1:]):
            between = tokenizer.decode(ids[b:c], skip_special_tokens=False)  # the environment's turn
            assert "<|im_start|>user\n" in between and between.endswith("<|im_start|>assistant\n")
    _, split = to_experiences(outs, max_len=max_len)
    assert len(split) == 2 and all("reward/checks" in e.info for e in split)
