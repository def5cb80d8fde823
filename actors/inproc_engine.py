"""An asyncio face on vLLM's in-process engine, for the rollout worker on CPU.

vLLM's AsyncLLM always runs its EngineCore in a separate process, and on CPU that process spawns one more for
the model worker: two fresh Pythons importing vLLM, ~85 s of a rollout worker's start on a 2-core machine
(shared/notes/startup-and-test-time.md) and ~1.2 GB of RSS. `LLMEngine` with multiprocessing off runs
scheduler and model in the calling process. This class gives it the part of AsyncLLM's interface the rollout
worker uses (`generate`, `collective_rpc`, `reset_prefix_cache`, `shutdown`), so the agent loop is the same
code on either engine.

Concurrency: one stepper task runs `engine.step()` in a thread of its own while requests are pending (torch releases
the GIL, so the event loop keeps serving environment replies meanwhile). vLLM's engine is not thread-safe, so
every call into it holds one asyncio lock; the stepper takes it per step, which lets new requests, weight
loads and cache resets in between steps, in arrival order.
"""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from vllm.v1.engine.llm_engine import LLMEngine


class InProcessEngine:
    def __init__(self, engine_args):
        # Read by vLLM when the engine is built: keep the EngineCore in this process (no subprocesses).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        engine_args.distributed_executor_backend = "uni"  # the model worker in this process too
        self.engine = LLMEngine.from_engine_args(engine_args, enable_multiprocessing=False)
        self._lock = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future] = {}
        self._stepper: asyncio.Task | None = None
        # Its own thread: the default executor is shared with the rollout worker's environment calls.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="vllm-step")

    async def generate(self, prompt, params, request_id: str):
        """Yields the request's final RequestOutput (the rollout worker reads only the last one)."""
        future = asyncio.get_running_loop().create_future()
        async with self._lock:
            self.engine.add_request(request_id, prompt, params)
            self._waiting[request_id] = future
        if self._stepper is None or self._stepper.done():
            self._stepper = asyncio.create_task(self._step_while_busy())
        try:
            yield await future
        except asyncio.CancelledError:  # the episode was cancelled: free the request's KV blocks
            async with self._lock:
                self._waiting.pop(request_id, None)
                self.engine.abort_request([request_id])
            raise

    async def _step_while_busy(self) -> None:
        try:
            while self._waiting:
                async with self._lock:
                    outputs = await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.step)
                for out in outputs:
                    if out.finished:
                        future = self._waiting.pop(out.request_id, None)
                        if future is not None and not future.done():
                            future.set_result(out)
        except BaseException as e:  # an engine error fails every waiting request instead of hanging them
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(e)
            self._waiting.clear()
            raise

    async def collective_rpc(self, method: str, args: tuple = ()) -> list:
        async with self._lock:
            return self.engine.collective_rpc(method, args=args)

    async def reset_prefix_cache(self) -> bool:
        async with self._lock:
            return self.engine.reset_prefix_cache()

    def shutdown(self) -> None:
        if self._stepper is not None:
            self._stepper.cancel()
        self.engine.engine_core.shutdown()
        self._thread.shutdown(wait=False)
