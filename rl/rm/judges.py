"""Generative LLM judges: a pairwise preference judge (rl.rm.eval) and an NL-assertion judge (the RewardActor).

Clients (anything with `complete(conversations, n) -> n texts per conversation`):
* `LiteLLMChat`: any OpenAI-compatible endpoint through litellm (a local vLLM server, a hosted model).
* `VLLMChat`: a Ray actor holding a vLLM engine on a local model folder, prompts rendered with its chat template.

Judges, built so that known LLM-judge biases cannot pay off:
* position bias: `PairwiseJudge` shows the chosen side as A or B by a seeded hash of the pair (deterministic for
  a seed, ~50/50, independent of batching and of the other pairs); `both_orders=True` asks again with A/B swapped
  and averages. `AssertionJudge` shows the assertions in a seeded random order and maps verdicts back.
* length bias: both instructions say explicitly that length and verbosity are not merit.
* parse failures: never guessed. A pairwise verdict that is not exactly one of `[[A]]` / `[[B]]` scores 0.5;
  an assertion without a `<n>: MET` line is not met. Counts are kept in `judge.stats`.
* small local judges: `PairwiseJudge(verdict="logprob")` (a client with `next_token_logprobs`: VLLMChat) does not
  let the model write: the reply is started as `[[` and the verdict is whichever of `A` / `B` the model finds more
  likely as the next token (0.5 when neither is among its TOP_LOGPROBS most likely tokens, or on an exact tie).
  SmolLM2-135M-Instruct wrote no parseable verdict for 157 of 163 TeleQnA pairs when asked for text.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class ChatClient(Protocol):
    name: str  # identity for reports (model / endpoint)

    def complete(self, conversations: list[list[dict]], n: int = 1) -> list[list[str]]:
        """n sampled completions (texts) for each conversation, in order."""
        ...


# How many of the most likely next tokens a local engine reports (vLLM's default max_logprobs): an option outside
# them counts as absent.
TOP_LOGPROBS = 20


# ------------------------------------------------------------------------------------------------- clients
class LiteLLMChat:
    """An OpenAI-compatible endpoint (envs.tau2_telecom.endpoint.LLMEndpoint) through litellm, `concurrency` requests at
    a time. n samples are asked for with OpenAI's `n`; a server that returns fewer choices (many do) is asked
    again until there are n. Endpoint errors propagate: a judge that cannot be reached must not read as 0.5."""

    def __init__(self, endpoint, concurrency: int = 8):
        if not endpoint.model:
            raise ValueError("LiteLLMChat: endpoint.model is empty (a litellm model name, e.g. 'openai/<served-name>')")
        self.endpoint = endpoint
        self.concurrency = max(1, concurrency)
        self.name = endpoint.model + (f" @ {endpoint.base_url}" if endpoint.base_url else "")

    def _one(self, messages: list[dict], n: int) -> list[str]:
        # Like envs/tau2_telecom/tau2_api.py: litellm would fetch its model-cost map over the network on import.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        e = self.endpoint
        args = {"model": e.model, "messages": messages, **e.litellm_args(num_retries=1)}
        if e.temperature == 0 and n > 1:
            # Greedy samples are all the same text, and OpenAI-compatible vLLM servers refuse n > 1 with greedy
            # decoding: ask once, repeat the answer.
            return self._one(messages, 1) * n
        texts: list[str] = []
        for _ in range(n):  # at most n round trips, even if a server always answers with one choice
            resp = litellm.completion(n=n - len(texts), **args)
            texts += [c.message.content or "" for c in resp.choices]
            if len(texts) >= n:
                break
        return texts[:n]

    def complete(self, conversations: list[list[dict]], n: int = 1) -> list[list[str]]:
        if self.concurrency == 1 or len(conversations) <= 1:
            return [self._one(c, n) for c in conversations]
        with ThreadPoolExecutor(self.concurrency) as pool:  # map keeps the input order
            return list(pool.map(lambda c: self._one(c, n), conversations))


class _VLLMChatEngine:
    """Body of the VLLMChat Ray actor: an offline `vllm.LLM` (a batch judge needs no async engine)."""

    def __init__(self, model_path: str, max_model_len: int | None, max_tokens: int, temperature: float,
                 kv_cache_gib: float, gpu_memory_utilization: float, seed: int, in_process: bool):
        if in_process:
            # The engine runs in this actor's process instead of spawning EngineCore + Worker processes: on CPU
            # it starts faster and takes ~1.2 GB less (cpu-stack-facts.md section 1). vLLM then turns
            # torch.set_num_threads into a no-op for the process, harmless here: this actor only generates.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from rl.fast_start import loading_without_gc

        with loading_without_gc():
            import torch
            from transformers import AutoTokenizer
            from vllm import LLM

        t0 = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{model_path}: tokenizer has no chat template; a judge needs one to render prompts")
        # The facts from actors/rollout_worker.py: on CPU float32 + eager, and the KV cache size must be set
        # (vLLM-CPU would otherwise reserve most of the machine's RAM).
        on_gpu = torch.cuda.is_available()
        kw = {"model": model_path, "seed": seed, "enforce_eager": not on_gpu, "dtype": "auto" if on_gpu else "float32"}
        if max_model_len:
            kw["max_model_len"] = max_model_len
        if on_gpu:
            kw["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            kw["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        with loading_without_gc():  # the engine lives as long as this actor
            self.llm = LLM(**kw)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.max_tokens, self.temperature = max_tokens, temperature
        self.overlong = 0  # prompts that left no room to answer (answered "": unparseable)
        self.startup_s = time.perf_counter() - t0

    def info(self) -> dict:
        return {"max_model_len": self.max_model_len, "startup_s": self.startup_s, "overlong": self.overlong,
                "pid": os.getpid()}

    def complete(self, conversations: list[list[dict]], n: int = 1) -> list[list[str]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        out: list[list[str]] = [[""] * n for _ in conversations]
        prompts, params, where = [], [], []
        for i, conv in enumerate(conversations):
            text = self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            budget = min(self.max_tokens, self.max_model_len - len(ids))
            if budget < 1:
                self.overlong += 1
                continue
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            # vLLM refuses n > 1 with greedy decoding; greedy samples would all be the same text anyway.
            params.append(SamplingParams(n=n if self.temperature > 0 else 1, temperature=self.temperature,
                                         max_tokens=budget))
            where.append(i)
        if self.overlong:
            log.warning("VLLMChat: %d prompt(s) so far longer than max_model_len=%d were not judged",
                        self.overlong, self.max_model_len)
        if prompts:
            for i, res in zip(where, self.llm.generate(prompts, params, use_tqdm=False)):
                texts = [c.text for c in res.outputs]
                out[i] = texts if len(texts) == n else texts[:1] * n
        return out

    def next_token_logprobs(self, conversations: list[list[dict]], prefix: str,
                            options: list[str]) -> list[dict[str, float]]:
        """Per conversation, the log-probability of each option (one token each) as the next token of an assistant
        reply that starts with `prefix`: {option: logprob} for the options among the TOP_LOGPROBS most likely
        tokens ({} for a prompt longer than max_model_len)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        option_ids = {}
        for option in options:
            ids = self.tokenizer(option, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(f"verdict option {option!r} is {len(ids)} tokens in this tokenizer; a verdict by "
                                 "next-token probability needs one token per option")
            option_ids[option] = ids[0]
        out: list[dict[str, float]] = [{} for _ in conversations]
        prompts, where = [], []
        for i, conv in enumerate(conversations):
            text = self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False) + prefix
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) >= self.max_model_len:
                self.overlong += 1
                continue
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            where.append(i)
        if prompts:
            params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS)
            for i, res in zip(where, self.llm.generate(prompts, params, use_tqdm=False)):
                top = res.outputs[0].logprobs[0]  # {token id: Logprob} of the first generated position
                out[i] = {o: top[t].logprob for o, t in option_ids.items() if t in top}
        return out

    def shutdown(self) -> None:
        if getattr(self, "llm", None) is not None:
            self.llm.llm_engine.engine_core.shutdown()  # frees the engine processes and their /dev/shm segments
            self.llm = None


class VLLMChat:
    """A vLLM engine on a local model folder in a Ray actor; `complete` blocks on it. Starts a local Ray cluster
    (with this repo on the actors' PYTHONPATH) if none is up. Call `close()` (or use `with`) when done.

    in_process (default): the engine lives in the actor's own process (VLLM_ENABLE_V1_MULTIPROCESSING=0): one
    process instead of three, ~1.2 GB less; on the loaded 2-core box the tiny model's engine was built in 3.8 s
    in-process against 125 s with EngineCore/Worker processes (one measurement each).
    temperature 0 (default) is greedy: n samples are one answer repeated (vLLM refuses n > 1 greedy)."""

    def __init__(self, model_path: str, num_cpus: float = 1, num_gpus: float = 0, max_model_len: int | None = None,
                 max_tokens: int = 256, temperature: float = 0.0, kv_cache_gib: float = 0.5,
                 gpu_memory_utilization: float = 0.5, seed: int = 0, in_process: bool = True,
                 startup_timeout_s: float = 600):
        import ray

        if not Path(model_path, "config.json").is_file():
            raise FileNotFoundError(f"VLLMChat: {model_path} is not a model folder (no config.json)")
        from rl.runtime import init_ray

        init_ray(None, log_to_driver=False)
        self.name = f"vllm:{model_path}"
        self.actor = ray.remote(_VLLMChatEngine).options(num_cpus=num_cpus, num_gpus=num_gpus).remote(
            str(model_path), max_model_len, max_tokens, temperature, kv_cache_gib, gpu_memory_utilization, seed,
            in_process)
        self.info = ray.get(self.actor.info.remote(), timeout=startup_timeout_s)

    def complete(self, conversations: list[list[dict]], n: int = 1) -> list[list[str]]:
        import ray

        return ray.get(self.actor.complete.remote(conversations, n))

    def next_token_logprobs(self, conversations: list[list[dict]], prefix: str,
                            options: list[str]) -> list[dict[str, float]]:
        import ray

        return ray.get(self.actor.next_token_logprobs.remote(conversations, prefix, options))

    def close(self) -> None:
        import ray

        if self.actor is not None:
            try:
                ray.get(self.actor.shutdown.remote(), timeout=120)
            finally:
                ray.kill(self.actor)
                self.actor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------------------------------ rendering
def render_messages(messages: Sequence[dict]) -> str:
    """Chat messages as plain text for a judge: `[role] content`, tool calls and tool results spelled out."""
    blocks = []
    for m in messages:
        role = m.get("role", "?")
        head = f"tool {m['name']}" if role == "tool" and m.get("name") else role
        content = m.get("content")
        parts = [content if isinstance(content, str) else json.dumps(content)] if content else []
        for call in m.get("tool_calls") or []:
            fn = call.get("function", call)
            args = fn.get("arguments", {})
            parts.append(f"<tool_call> {fn.get('name')}({args if isinstance(args, str) else json.dumps(args)})")
        blocks.append(f"[{head}] " + "\n".join(parts))
    return "\n\n".join(blocks)


def clip_start(text: str, max_chars: int) -> str:
    """Keep the END of an over-long text: in an agent episode the outcome (what was finally done) is at the end;
    what goes first is the shared system prompt / policy."""
    if len(text) <= max_chars:
        return text
    return f"[... {len(text) - max_chars} earlier characters omitted ...]\n" + text[-max_chars:]


def _digest(seed: int, *parts) -> bytes:
    blob = json.dumps([seed, *parts], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).digest()


# ------------------------------------------------------------------------------------------- pairwise judge
PAIRWISE_SYSTEM = """You are an impartial judge of customer-support agents. You are shown a conversation so far \
and two candidate continuations of it, A and B, written by an agent (including its tool calls and the results). \
Decide which continuation better resolves the customer's problem correctly, following the policy and the \
customer's requests, with the right actions and arguments, and without harmful, unnecessary or premature steps.

Rules:
- Do NOT let the length of the continuations influence you: a longer, more detailed or more polite \
continuation is not better for that; judge only what it achieves and whether it is correct.
- Do NOT let the order in which A and B are shown influence you.
- Be objective; no ties.

You may explain briefly first. End your answer with your final verdict in exactly this format: \
"[[A]]" if continuation A is better, or "[[B]]" if continuation B is better."""

_VERDICT = re.compile(r"\[\[\s*([AB])\s*\]\]")


def parse_pairwise_verdict(text: str) -> str | None:
    """'A' / 'B' from the LAST `[[A]]`/`[[B]]` in the text (a judge may quote the format before its verdict);
    None when there is none (-> 0.5)."""
    found = _VERDICT.findall(text or "")
    return found[-1] if found else None


JUDGE_VERDICTS = ("text", "logprob")


def likelier_verdict(logprobs: dict[str, float]) -> str | None:
    """'A' / 'B', whichever the judge found more likely as its verdict token (one missing from the top tokens is
    less likely than the other); None when neither is there or on an exact tie."""
    a, b = logprobs.get("A", -math.inf), logprobs.get("B", -math.inf)
    return None if a == b else ("A" if a > b else "B")


class PairwiseJudge:
    """prefer(pairs) -> per pair the judge's preference for the chosen side: 1.0 chosen, 0.0 rejected, 0.5
    unparseable; with both_orders the mean of the two orders (a split verdict is 0.5)."""

    def __init__(self, client: ChatClient, seed: int = 0, both_orders: bool = False,
                 max_context_chars: int = 12000, max_candidate_chars: int = 6000, verdict: str = "text"):
        if verdict not in JUDGE_VERDICTS:
            raise ValueError(f"verdict must be one of {JUDGE_VERDICTS}, not {verdict!r}")
        if verdict == "logprob" and not hasattr(client, "next_token_logprobs"):
            raise ValueError(f"verdict='logprob' needs a client that reports next-token logprobs (VLLMChat), not "
                             f"{type(client).__name__}")
        self.client, self.seed, self.both_orders, self.verdict = client, seed, both_orders, verdict
        self.max_context_chars, self.max_candidate_chars = max_context_chars, max_candidate_chars
        # chose_a: verdicts for the side shown first (a fair judge: about half); position_only (with both_orders):
        # pairs given the same letter in both orders, i.e. decided by position alone
        self.stats = {"judgments": 0, "unparseable": 0, "chose_a": 0, "position_only": 0}

    @property
    def name(self) -> str:
        return getattr(self.client, "name", type(self.client).__name__)

    def chosen_first(self, pair) -> bool:
        """Whether the chosen side is shown as A (in both-orders mode: in the first of the two asks). A seeded
        hash of the pair's content: the same pair always gets the same order for a seed, whatever the batch."""
        return _digest(self.seed, pair.prompt, pair.chosen, pair.rejected)[0] & 1 == 0

    def prompt(self, pair, chosen_is_a: bool) -> list[dict]:
        a, b = (pair.chosen, pair.rejected) if chosen_is_a else (pair.rejected, pair.chosen)
        user = (f"<conversation>\n{clip_start(render_messages(pair.prompt), self.max_context_chars)}\n</conversation>"
                f"\n\n<continuation_A>\n{clip_start(render_messages(a), self.max_candidate_chars)}\n</continuation_A>"
                f"\n\n<continuation_B>\n{clip_start(render_messages(b), self.max_candidate_chars)}\n</continuation_B>"
                "\n\nWhich continuation is better? End with [[A]] or [[B]].")
        return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}]

    def prefer(self, pairs: list) -> list[float]:
        asks: list[tuple[int, bool]] = []  # (pair index, chosen shown as A)
        for i, p in enumerate(pairs):
            first = self.chosen_first(p)
            asks += [(i, first), (i, not first)] if self.both_orders else [(i, first)]
        prompts = [self.prompt(pairs[i], a) for i, a in asks]
        if not asks:
            verdicts = []
        elif self.verdict == "logprob":
            verdicts = [likelier_verdict(lp) for lp in self.client.next_token_logprobs(prompts, "[[", ["A", "B"])]
        else:
            verdicts = [parse_pairwise_verdict(texts[0] if texts else "") for texts in self.client.complete(prompts)]
        votes: list[list[float]] = [[] for _ in pairs]
        letters: list[list[str | None]] = [[] for _ in pairs]
        for (i, chosen_is_a), verdict in zip(asks, verdicts):
            self.stats["judgments"] += 1
            letters[i].append(verdict)
            if verdict is None:
                self.stats["unparseable"] += 1
                votes[i].append(0.5)
            else:
                self.stats["chose_a"] += verdict == "A"
                votes[i].append(1.0 if (verdict == "A") == chosen_is_a else 0.0)
        self.stats["position_only"] += sum(len(ls) == 2 and ls[0] is not None and ls[0] == ls[1] for ls in letters)
        return [sum(v) / len(v) for v in votes]


# ------------------------------------------------------------------------------------------ assertion judge
ASSERTION_SYSTEM = """You are a strict, impartial judge. You are shown a conversation between a customer-support \
agent and a customer (with the agent's tool calls and their results) and a numbered list of assertions about what \
the agent should have done. For EACH assertion decide independently whether the conversation shows it is met.

Rules:
- Use only evidence in the conversation; if it does not show the assertion is satisfied, it is NOT_MET.
- Do NOT let length influence you: a longer, more verbose or more polite conversation does not meet an \
assertion unless it actually does what the assertion says, and a short one that does it meets it.
- The order of the assertions means nothing.

You may reason briefly first. Then give one line per assertion, in exactly this format:
<number>: MET
or
<number>: NOT_MET"""

_ASSERTION_LINE = re.compile(r"^[\s*#>-]*(\d+)\s*\**\s*[:.)\-]\s*\**\s*(NOT[_ ]MET|MET)\b",
                             re.IGNORECASE | re.MULTILINE)


def parse_assertion_verdicts(text: str, count: int) -> list[bool | None]:
    """Verdict per shown number 1..count (the last line for a number wins); None = no verdict."""
    out: list[bool | None] = [None] * count
    for num, word in _ASSERTION_LINE.findall(text or ""):
        k = int(num) - 1
        if 0 <= k < count:
            out[k] = word.upper() == "MET"
    return out


class AssertionJudge:
    """judge(conversation, assertions) -> met per assertion, in the assertions' ORIGINAL order. With votes > 1
    the client samples `votes` completions and an assertion is met only on a strict majority (ties and
    unparseable answers count as not met); sampling needs a temperature > 0 to be worth anything."""

    def __init__(self, client: ChatClient, votes: int = 1, seed: int = 0, max_conversation_chars: int = 16000):
        if votes < 1:
            raise ValueError(f"AssertionJudge: votes must be >= 1, got {votes}")
        self.client, self.votes, self.seed = client, votes, seed
        self.max_conversation_chars = max_conversation_chars
        self.stats = {"judgments": 0, "unparseable": 0}  # per (sample, assertion)

    def order(self, conversation: list[dict], assertions: list[str]) -> list[int]:
        """Original indices in the order shown; seeded by the content, so a given conversation is always shown
        its assertions the same way for a seed."""
        idx = list(range(len(assertions)))
        random.Random(_digest(self.seed, conversation, assertions)).shuffle(idx)
        return idx

    def prompt(self, conversation: list[dict], assertions: list[str], order: list[int]) -> list[dict]:
        listed = "\n".join(f"{k + 1}. {assertions[i]}" for k, i in enumerate(order))
        user = (f"<conversation>\n{clip_start(render_messages(conversation), self.max_conversation_chars)}\n"
                f"</conversation>\n\nAssertions:\n{listed}\n\n"
                f"Give your verdicts for assertions 1-{len(order)}, one line each: `<number>: MET` or "
                "`<number>: NOT_MET`.")
        return [{"role": "system", "content": ASSERTION_SYSTEM}, {"role": "user", "content": user}]

    def judge_many(self, items: list[tuple[list[dict], list[str]]]) -> list[list[bool]]:
        """Several (conversation, assertions) at once: one batched client call."""
        results: list[list[bool]] = [[] for _ in items]
        todo = [(j, self.order(conv, a)) for j, (conv, a) in enumerate(items) if a]
        if not todo:
            return results
        replies = self.client.complete([self.prompt(items[j][0], items[j][1], order) for j, order in todo],
                                       n=self.votes)
        for (j, order), texts in zip(todo, replies):
            met_votes = [0] * len(order)  # by shown position
            texts = list(texts)[: self.votes] + [""] * (self.votes - len(texts))  # missing samples: unparseable
            for text in texts:
                for k, v in enumerate(parse_assertion_verdicts(text, len(order))):
                    self.stats["judgments"] += 1
                    self.stats["unparseable"] += v is None
                    met_votes[k] += v is True
            met = [False] * len(order)
            for k, i in enumerate(order):
                met[i] = 2 * met_votes[k] > self.votes
            results[j] = met
        return results

    def judge(self, conversation: list[dict], assertions: list[str]) -> list[bool]:
        return self.judge_many([(conversation, assertions)])[0]
