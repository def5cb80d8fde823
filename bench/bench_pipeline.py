"""Pipeline benchmark: the agent loop's generation throughput and the RL step's time split, side by side in one run.

    python -m bench.bench_pipeline [--model tiny] [--episodes 8] [--hf-episodes N] [--rounds 5]
                                   [--sampler-episodes 64] [--parts raw,naive,engines,dtypes,step]
                                   [--out bench_results/pipeline.json]
    python -m bench.bench_pipeline --model smollm2-135m --kv-gib 2 --parts naive --episodes 4 --rounds 1 \
                                   --out bench_results/pipeline_smollm2.json      # part 2 with a real model

1. Agent loop vs raw vLLM. RolloutWorker.rollout runs multi-turn episodes (--model, dual mode, compact prompt).
   Each turn's prompt (the token prefix before a generated span) and generated-token count are read back from the
   trajectories, then the same engine generates exactly that many tokens (ignore_eos) from exactly those prompts:
   - raw/batched: all turns of all episodes at once - more parallelism than episodes allow (turn k+1 needs turn k);
   - raw/dependent: each episode's turns one after another, episodes concurrent - the agent loop's structure
     without the environment, the chat template and the bookkeeping. The headline ratio uses this arm.
   The prefix cache is reset before every arm, so no arm reuses KV another arm computed.
2. Agent loop vs a naive loop: transformers `model.generate`, one episode and one turn at a time, re-rendering and
   re-tokenising the whole conversation every turn, against an in-process TelecomSession with ScriptedUser.
3. Step-time breakdown of the real driver (rl.train.Trainer, configs/test_tiny.yaml), second step.
4. Rollout engines (rollout.engine): vLLM's engine in the actor's process (the CPU default) vs AsyncLLM with its
   EngineCore process: actor start-up (process + imports + engine) and agent-loop tokens/s on the same episodes.
5. Engine dtype (rollout.dtype): bfloat16 vs float32, agent-loop tokens/s on the same --sampler-episodes episodes at
   once (float32 is what RL uses on CPU, so that the learner's logprobs match; bfloat16 is for sampling whose tokens
   are all that count, e.g. bench_learning's rejection-sampling rounds).

Arms run interleaved (A B A B ...) so machine noise hits them alike; medians over rounds; ratios are what to read.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import glob
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import ray

from actors.env_worker import EnvPool, EnvSettings
from actors.rollout_worker import RolloutSettings, RolloutWorkerImpl
from bench import finish
from envs.tau2_telecom.session import TelecomSession
from envs.tau2_telecom.tasks import load_split
from envs.tau2_telecom.users import ScriptedUser
from envs.tau2_telecom.world import get_world
from rl.contracts import EpisodeJob, Trajectory
from rl.runtime import init_ray

ROOT = Path(__file__).resolve().parents[1]
MODE, MAX_MODEL_LEN = "dual", 4096
COMPARISONS = ("raw", "naive", "engines", "dtypes", "step")
ENV = EnvSettings(prompt="compact")  # the same limits serve the actor sessions and the naive baseline's session


class BenchRolloutWorkerImpl(RolloutWorkerImpl):
    """The production worker plus one hook: a prefix-cache reset, so that every arm starts cold."""

    async def reset_prefix_cache(self) -> bool:
        return await self.engine.reset_prefix_cache()


BenchRolloutWorker = ray.remote(BenchRolloutWorkerImpl)


# ------------------------------------------------------------------ 1. agent loop vs raw vLLM
def generated_spans(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of sampled tokens: one per turn; the start is where that turn's generation began."""
    spans, start = [], None
    for i, m in enumerate(mask + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    return spans


def turn_workload(trajs: list[Trajectory]) -> list[list[tuple[list[int], int]]]:
    """Per episode, per turn: (prompt token ids, generated token count)."""
    out = []
    for t in trajs:
        spans = generated_spans(t.loss_mask)
        assert len(spans) == t.turns, (len(spans), t.turns)
        out.append([(t.token_ids[:a], b - a) for a, b in spans])
    return out


def agent_arm(worker, jobs: list[EpisodeJob]) -> tuple[float, list[Trajectory]]:
    ray.get(worker.reset_prefix_cache.remote())
    t0 = time.perf_counter()
    trajs = ray.get(worker.rollout.remote(jobs))
    return time.perf_counter() - t0, trajs


def raw_batched_arm(worker, work) -> tuple[float, int]:
    by_count = defaultdict(list)  # generate_tokens takes one max_tokens per call: one call per distinct count
    for episode in work:
        for prompt, n in episode:
            by_count[n].append(prompt)
    ray.get(worker.reset_prefix_cache.remote())
    t0 = time.perf_counter()
    outs = ray.get([worker.generate_tokens.remote(ps, n) for n, ps in by_count.items()])
    wall = time.perf_counter() - t0
    return wall, sum(len(ids) for out in outs for ids in out)


def raw_dependent_arm(worker, work) -> tuple[float, int]:
    async def episode(turns):
        n_out = 0
        for prompt, n in turns:  # turn k+1 is sent only once turn k is back, as in an episode
            n_out += len((await worker.generate_tokens.remote([prompt], n))[0])
        return n_out

    async def all_episodes():
        return await asyncio.gather(*(episode(turns) for turns in work))

    ray.get(worker.reset_prefix_cache.remote())
    t0 = time.perf_counter()
    counts = asyncio.run(all_episodes())
    return time.perf_counter() - t0, sum(counts)


def bench_agent_vs_raw(worker, jobs: list[EpisodeJob], rounds: int) -> dict:
    rows = []
    for _ in range(rounds):
        wall, trajs = agent_arm(worker, jobs)
        work = turn_workload(trajs)
        tokens = sum(n for ep in work for _, n in ep)
        b_wall, b_tokens = raw_batched_arm(worker, work)
        d_wall, d_tokens = raw_dependent_arm(worker, work)
        assert b_tokens == d_tokens == tokens, (tokens, b_tokens, d_tokens)  # same work in every arm
        rows.append({"tokens": tokens, "turns": sum(len(ep) for ep in work),
                     "max_turns": max(len(ep) for ep in work),
                     "mean_prompt_tokens": round(statistics.mean(len(p) for ep in work for p, _ in ep)),
                     "agent_s": wall, "raw_batched_s": b_wall, "raw_dependent_s": d_wall,
                     # Inside the episodes (summed over episodes, so concurrent waits count once per episode):
                     "episode_generate_s": sum(t.timings.generate_s for t in trajs),
                     "episode_env_s": sum(t.timings.env_s for t in trajs)})
    for r in rows:  # per round the arms did the same work, so the paired per-round ratio is the one to read
        for arm in ("agent", "raw_batched", "raw_dependent"):
            r[f"{arm}_tok_s"] = r["tokens"] / r[f"{arm}_s"]
        r["ratio_vs_dependent"] = r["agent_tok_s"] / r["raw_dependent_tok_s"]
        r["ratio_vs_batched"] = r["agent_tok_s"] / r["raw_batched_tok_s"]
    return {"episodes": len(jobs), "rounds": rows,
            "tok_s": {arm: round(_median(rows, f"{arm}_tok_s")) for arm in ("agent", "raw_batched", "raw_dependent")},
            "ratio_vs_dependent": round(_median(rows, "ratio_vs_dependent"), 3),
            "ratio_vs_batched": round(_median(rows, "ratio_vs_batched"), 3)}


# ------------------------------------------------------------------ 4, 5. rollout engines and their dtype
def bench_engines(settings: RolloutSettings, env: EnvPool, jobs: list[EpisodeJob], rounds: int, key: str,
                  arms: tuple[str, str]) -> dict:
    """Two engines differing in one RolloutSettings field (`key`: engine kind, dtype), each started alone (a start
    competing with another would be slower); then the agent-loop arm alternates between them on the same episodes.
    Ratios are arms[0] / arms[1]."""
    workers, start = {}, {}
    for arm in arms:
        t0 = time.perf_counter()
        workers[arm] = BenchRolloutWorker.options(num_cpus=0).remote(
            dataclasses.replace(settings, **{key: arm}), env.workers, ENV, f"bench-{arm}")
        engine_s = ray.get(workers[arm].start.remote(), timeout=600)["seconds"]
        start[arm] = {"actor_start_s": round(time.perf_counter() - t0, 1), "engine_s": round(engine_s, 1)}
        agent_arm(workers[arm], jobs)  # warm-up
    tok_s = defaultdict(list)
    for _ in range(rounds):
        for arm, worker in workers.items():
            wall, trajs = agent_arm(worker, jobs)
            tok_s[arm].append(sum(t.generated_tokens for t in trajs) / wall)
    for worker in workers.values():
        ray.get(worker.shutdown.remote())
        ray.kill(worker)
    a, b = arms
    return {"start": start, "tok_s": {k: round(statistics.median(v)) for k, v in tok_s.items()},
            "start_ratio": round(start[a]["actor_start_s"] / start[b]["actor_start_s"], 2),
            "tok_s_ratio": round(statistics.median(tok_s[a]) / statistics.median(tok_s[b]), 2)}


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def host_overhead_ms(model_path: str, trajs: list[Trajectory], tools: list[dict]) -> dict:
    """CPU the agent loop spends per turn outside the engine, on the actor's event loop: observation_ids renders
    the whole conversation twice with the chat template and re-encodes the tail. Timed here, in-process."""
    impl = RolloutWorkerImpl(RolloutSettings(model_path=model_path))
    from transformers import AutoTokenizer

    impl.tokenizer = AutoTokenizer.from_pretrained(model_path)
    samples = []
    for t in trajs:
        msgs = t.messages
        assistant = [i for i, m in enumerate(msgs) if m["role"] == "assistant"][1:]  # [0] is tau2's greeting
        for k, i in enumerate(assistant):
            end = assistant[k + 1] if k + 1 < len(assistant) else len(msgs)
            t0 = time.perf_counter()
            impl.observation_ids(msgs[:i], tools, msgs[i]["content"], msgs[i + 1:end])
            samples.append((time.perf_counter() - t0) * 1e3)
    return {"observation_ids_ms_median": round(statistics.median(samples), 2), "n": len(samples)}


def env_call_ms(env: EnvPool, trajs: list[Trajectory]) -> dict:
    """Latency of each EnvPool call alone (one Ray round trip each), replaying the warm-up episodes' assistant
    turns - to compare with the env time the episodes see inside the concurrent agent loop."""
    ms = defaultdict(list)

    def timed(kind, fn, *a):
        t0 = time.perf_counter()
        out = fn(*a)
        ms[kind].append((time.perf_counter() - t0) * 1e3)
        return out

    by_id = {t.id: t for t in load_split("small")}
    for t in trajs:
        sid, _ = timed("reset", env.reset, by_id[t.task_id], MODE)
        for m in [m for m in t.messages if m["role"] == "assistant"][1:]:
            if timed("step", env.step, sid, m["content"])["done"]:
                break
        timed("evaluate", env.evaluate_many, [sid])
        timed("close", env.close_many, [sid])
    return {k: round(statistics.median(v), 2) for k, v in ms.items()}


# ----------------------------------------------------------- 2. agent loop vs naive HF generate
def naive_hf_arm(model, tok, tasks, max_new_tokens: int) -> tuple[float, int]:
    """What a first implementation does: one episode, one turn at a time; every turn re-renders the whole
    conversation with the chat template and re-tokenises it, then calls model.generate."""
    import torch

    session = TelecomSession(get_world(ENV.policy, ENV.call_limits), ENV.limits, user=ScriptedUser(), prompt=ENV.prompt)
    eos, tokens = tok.eos_token_id, 0
    t0 = time.perf_counter()
    for task in tasks:
        obs = session.reset(task, MODE)
        messages, tools, done = list(obs.messages), obs.tools, obs.done
        while not done:
            text = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            if ids.shape[1] + 8 > MAX_MODEL_LEN:
                break
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=min(max_new_tokens, MAX_MODEL_LEN - ids.shape[1] - 1),
                                     do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                     eos_token_id=eos, pad_token_id=eos)
            new = out[0, ids.shape[1]:].tolist()
            tokens += len(new)
            reply = tok.decode([t for t in new if t != eos], skip_special_tokens=False)
            obs = session.step(reply)
            messages += [{"role": "assistant", "content": reply}] + obs.messages
            done = obs.done
        session.evaluate()  # the agent loop scores every episode too
    return time.perf_counter() - t0, tokens


def bench_agent_vs_naive(worker, model_path: str, tasks, rounds: int, max_new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    # vLLM's CPU worker runs one OMP thread on one core; give the baseline the same (and on this shared 2-core
    # machine a 2-thread OMP loop stalls badly whenever anything else runs).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    naive_hf_arm(model, tok, tasks[:1], max_new_tokens)  # warm-up: world parse, first-call costs
    jobs = [EpisodeJob(t.model_dump(mode="json"), i) for i, t in enumerate(tasks)]
    rows = []
    for _ in range(rounds):
        wall, trajs = agent_arm(worker, jobs)
        hf_wall, hf_tokens = naive_hf_arm(model, tok, tasks, max_new_tokens)
        tokens = sum(sum(t.loss_mask) for t in trajs)
        rows.append({"agent_tokens": tokens, "agent_s": wall, "agent_tok_s": tokens / wall,
                     "naive_tokens": hf_tokens, "naive_s": hf_wall, "naive_tok_s": hf_tokens / hf_wall})
    torch.set_num_threads(threads)
    return {"episodes": len(tasks), "rounds": rows, "torch_threads_naive": 1,
            "tok_s": {"agent": round(_median(rows, "agent_tok_s"), 1),
                      "naive_hf": round(_median(rows, "naive_tok_s"), 1)},
            "ratio": round(_median(rows, "agent_tok_s") / _median(rows, "naive_tok_s"), 2)}


# ---------------------------------------------------------------------- 3. step-time breakdown
PARTS = ("generate", "env", "reward", "train", "sync")


def bench_step_breakdown(steps: int = 2) -> dict:
    from rl.config import load_config
    from rl.train import Trainer

    tmp = tempfile.mkdtemp(prefix="bench_pipeline_")
    cfg = load_config(str(ROOT / "configs/test_tiny.yaml"),
                      # A random model's episodes of one task tie on reward, and the driver skips a step with no
                      # signal; a small KL term keeps every step a real train + sync step for this measurement.
                      [f"run_dir={tmp}/run", f"train.steps={steps}", "reward.env_assertion_weight=0.5",
                       "reward.action_weight=0.5", "algorithm.kl_coef=0.01"])
    trainer = Trainer(cfg)
    try:
        metrics, walls = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            metrics.append(trainer.train_step())
            walls.append(time.perf_counter() - t0)  # also what time/step leaves out (advantages, logs, checkpoint)
    finally:
        trainer.close()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    def split(m: dict, wall: float) -> dict:
        step = m["time/step"]
        return {"step_s": round(step, 3), "wall_s": round(wall, 3),
                "seconds": {p: round(m[f"time/{p}"], 3) for p in PARTS},
                "fraction": {p: round(m[f"time/{p}"] / step, 4) for p in PARTS},
                "episodes": m["episodes"], "turns": m["episode/turns"],
                "generated_tokens": m["episode/generated_tokens"]}

    last = split(metrics[-1], walls[-1])
    return {"steps": [split(m, w) for m, w in zip(metrics, walls)], "measured_step": steps, **last,
            "env_plus_reward": round(last["fraction"]["env"] + last["fraction"]["reward"], 4)}


# --------------------------------------------------------------------------------- plumbing
def shm_segments() -> set[str]:
    return set(glob.glob("/dev/shm/psm_*") + glob.glob("/dev/shm/sem.mp-*"))


def cleanup_shm(before: set[str]) -> int:
    """Remove the /dev/shm segments our engines left (tests/conftest.py: cleanup_vllm_shm), but only the ones that
    appeared during this run and that no live process maps - other people's engines share this machine."""
    mapped = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as f:
                mapped.update(line.split()[-1] for line in f if "/dev/shm/" in line)
        except OSError:
            pass
    removed = 0
    for path in shm_segments() - before - mapped:
        try:
            if os.stat(path).st_uid == os.getuid():
                os.unlink(path)
                removed += 1
        except OSError:
            pass
    return removed


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=8, help="agent episodes per round for the raw-vLLM comparison")
    ap.add_argument("--hf-episodes", type=int, default=None,
                    help="episodes per round for the naive HF comparison (default: --episodes; ~0.3 s each here)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the raw-vLLM comparison (naive HF: 3)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--sampler-episodes", type=int, default=64, help="episodes in flight for the dtype comparison")
    ap.add_argument("--model", default="tiny", help="tiny | smollm2-135m | a local HF folder (parts 1, 2, 4, 5)")
    ap.add_argument("--kv-gib", type=float, default=0.25,
                    help="KV cache of the benchmark's engine (GiB): 0.25 holds 8 tiny episodes, SmolLM2 needs ~2")
    ap.add_argument("--parts", default=",".join(COMPARISONS),
                    help="comma-separated subset of raw (1), naive (2), engines (4), dtypes (5), step (3)")
    ap.add_argument("--out", default="bench_results/pipeline.json")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(COMPARISONS))
    if unknown or not parts:
        ap.error(f"--parts: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(COMPARISONS)}")
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    from rl.models import resolve_model

    shm_before = shm_segments()
    model_path = str(resolve_model(args.model))
    tasks = load_split("small")
    report: dict = {"model": args.model, "parts": parts, "kv_gib": args.kv_gib, "mode": MODE, "prompt": ENV.prompt,
                    "max_new_tokens": args.max_new_tokens,
                    "rounds": args.rounds, "sampler_episodes": args.sampler_episodes, "cpus": os.cpu_count(),
                    "load_avg_start": os.getloadavg()}
    t_start = last = time.perf_counter()
    sections = report["sections_s"] = {}  # where the run's wall time goes (engine starts dominate)

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        sections[name] = round(now - last, 1)
        last = now

    init_ray(None, 2, log_to_driver=False)
    try:
        env = EnvPool(ENV, num_workers=1)
        settings = RolloutSettings(model_path=model_path, mode=MODE, max_model_len=MAX_MODEL_LEN,
                                   max_new_tokens=args.max_new_tokens, kv_cache_gib=args.kv_gib)
        worker = BenchRolloutWorker.options(num_cpus=1).remote(settings, env.workers, ENV, "bench")
        report["engine_start_s"] = round(ray.get(worker.start.remote(), timeout=300)["seconds"], 1)
        jobs = [EpisodeJob(t.model_dump(mode="json"), i) for i, t in enumerate(tasks[: args.episodes])]
        _, warm = agent_arm(worker, jobs)  # warm-up: first-request costs out of the timings
        raw_batched_arm(worker, turn_workload(warm))
        lap("setup")
        if "raw" in parts:
            report["agent_vs_raw"] = bench_agent_vs_raw(worker, jobs, args.rounds)
            report["host_overhead"] = host_overhead_ms(model_path, warm, get_world().tool_schemas(MODE, compact=True))
            report["host_overhead"]["env_call_ms_median"] = env_call_ms(env, warm)
            lap("agent_vs_raw")
        if "naive" in parts:
            hf_tasks = tasks[: args.hf_episodes or args.episodes]
            report["agent_vs_naive_hf"] = bench_agent_vs_naive(worker, model_path, hf_tasks, min(3, args.rounds),
                                                               args.max_new_tokens)
            lap("agent_vs_naive_hf")
        ray.get(worker.shutdown.remote())
        ray.kill(worker)
        if "engines" in parts:
            report["engines"] = bench_engines(settings, env, jobs, min(3, args.rounds), "engine",
                                              ("in_process", "async"))
            lap("engines")
        if "dtypes" in parts:
            # as a rejection-sampling round samples: many episodes in flight, so attention over long contexts dominates
            many = [EpisodeJob(tasks[i % len(tasks)].model_dump(mode="json"), i) for i in range(args.sampler_episodes)]
            room = dataclasses.replace(settings, kv_cache_gib=max(1.0, args.kv_gib))  # KV for all of them
            report["dtypes"] = bench_engines(room, env, many, min(3, args.rounds), "dtype", ("bfloat16", "float32"))
            lap("dtypes")
        env.shutdown()
    finally:
        ray.shutdown()
    lap("teardown")
    if "step" in parts:  # always the tiny config: the driver's own step, whatever --model
        report["step_breakdown"] = bench_step_breakdown()
        lap("step_breakdown")
    report["shm_segments_removed"] = cleanup_shm(shm_before)
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    report["load_avg_end"] = os.getloadavg()

    return finish(report, args.out, _print)


def _goal(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _print(r: dict) -> None:
    print(f"\n== pipeline benchmark: {r['model']} model, {r['mode']} mode, {r['prompt']} prompt, max_new_tokens "
          f"{r['max_new_tokens']}, median of {r['rounds']} rounds (load avg at start {r['load_avg_start'][0]:.1f}) ==")
    if "agent_vs_raw" in r:
        _print_agent_vs_raw(r)
    n = r.get("agent_vs_naive_hf")
    if n:
        print(f"2. agent loop vs naive sequential HF generate, {n['episodes']} episodes, generated tokens/s: agent "
              f"{n['tok_s']['agent']}   naive {n['tok_s']['naive_hf']}   ratio {n['ratio']}x (goal >= 5x: "
              f"{_goal(n['ratio'] >= 5)})")
    if "step_breakdown" in r:
        _print_step(r["step_breakdown"])
    g = r.get("engines")
    if g:
        print("4. rollout engines: actor start-up (process, imports, engine) and agent-loop generated tokens/s")
        for kind in ("in_process", "async"):
            print(f"   {kind:<10} start {g['start'][kind]['actor_start_s']:>6} s (engine "
                  f"{g['start'][kind]['engine_s']} s)   {g['tok_s'][kind]} tok/s")
        print(f"   in_process / async: start {g['start_ratio']}x, tokens/s {g['tok_s_ratio']}x")
    d = r.get("dtypes")
    if d:  # rollout.dtype (bench_learning samples its rejection-sampling rounds in bfloat16 where the CPU has it)
        print(f"5. rollout.dtype, {r['sampler_episodes']} episodes at once: agent-loop generated tokens/s bfloat16 "
              f"{d['tok_s']['bfloat16']}, float32 {d['tok_s']['float32']}: bfloat16 / float32 {d['tok_s_ratio']}x")
    parts = ", ".join(f"{k} {v}" for k, v in r["sections_s"].items())
    print(f"total {r['total_s']} s ({parts}); /dev/shm segments removed: {r['shm_segments_removed']}")


def _print_agent_vs_raw(r: dict) -> None:
    a = r["agent_vs_raw"]
    last = a["rounds"][-1]
    print(f"1. agent loop vs raw vLLM, {a['episodes']} episodes (~{last['turns']} turns, {last['tokens']} generated "
          f"tokens, prompts ~{last['mean_prompt_tokens']} tokens per round), generated tokens/s:")
    print(f"   agent loop {a['tok_s']['agent']:>8}   raw, same turn order {a['tok_s']['raw_dependent']:>8}   "
          f"raw, all turns at once {a['tok_s']['raw_batched']:>8}")
    print(f"   agent / raw (same turn order)  {a['ratio_vs_dependent']:.3f}  (goal >= 0.85: "
          f"{_goal(a['ratio_vs_dependent'] >= 0.85)})  <- headline: same work, same dependencies")
    print(f"   agent / raw (all turns at once) {a['ratio_vs_batched']:.3f}  (upper bound on raw: turns of one episode "
          f"run in parallel there, impossible in an episode)")
    h = r["host_overhead"]
    print(f"   host CPU per turn in the actor's event loop (observation_ids: 2 template renders + encode): "
          f"{h['observation_ids_ms_median']} ms median")
    e, per_ep = h["env_call_ms_median"], 1e3 * _median(a["rounds"], "episode_env_s") / a["episodes"]
    alone = e["reset"] + e["step"] * last["turns"] / a["episodes"] + e["evaluate"] + e["close"]
    print(f"   env calls alone (ms): reset {e['reset']}  step {e['step']}  evaluate {e['evaluate']}  close {e['close']}"
          f" -> ~{alone:.0f} ms per episode; inside the concurrent agent loop an episode waits {per_ep:.0f} ms on env")


def _print_step(s: dict) -> None:
    fr = s["fraction"]
    print(f"3. driver step time (tiny config, step {s['measured_step']} - step 1 includes warm-up): "
          f"{s['step_s']:.2f} s (train_step wall {s['wall_s']:.2f} s)")
    print("   " + "   ".join(f"{p} {100 * fr[p]:.1f}%" for p in PARTS))
    print(f"   env+reward {100 * s['env_plus_reward']:.1f}% (goal < 5%: {_goal(s['env_plus_reward'] < 0.05)})   "
          f"sync {100 * fr['sync']:.1f}% (goal < 10%: {_goal(fr['sync'] < 0.10)})")
    print("   (time/env is the driver's own metric: rollout wall time x the average share of an episode's time "
          "spent waiting on env calls)")


if __name__ == "__main__":
    main()
