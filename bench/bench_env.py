"""Environment benchmark: gold-replay episodes/s and tool-call latency, measured side by side in one run.

    python -m bench.bench_env [--tasks 114] [--workers 2] [--out bench_results/env.json]

Compares our parse-once world (DBs and policy parsed once, copied per episode) against building every
environment with tau2's own constructor, both in-process and through EnvWorker Ray actors. The two arms
run interleaved (A B A B ...) so that machine noise hits both alike; the ratio is what to read.
"""
from __future__ import annotations

import argparse
import statistics
import time

from bench import finish
from envs.tau2_telecom.oracle import oracle_turns, play_oracle, tool_call_text
from envs.tau2_telecom.session import TelecomSession
from envs.tau2_telecom.tasks import load_split
from envs.tau2_telecom.users import ScriptedUser
from envs.tau2_telecom.world import get_world

ARMS = ("cached", "tau2_per_episode")


def in_process_eps(kind: str, tasks, mode: str) -> float:
    session = TelecomSession(get_world(kind=kind), user=ScriptedUser())
    start = time.perf_counter()
    for task in tasks:
        play_oracle(session, task, mode)
        assert session.evaluate().success, task.id
    return len(tasks) / (time.perf_counter() - start)


def tool_call_latency_ms(n: int = 300) -> dict:
    session = TelecomSession(get_world(), user=ScriptedUser())
    task = load_split("small")[0]
    turn = tool_call_text("check_network_status", {})
    samples = []
    session.reset(task, "solo")
    for _ in range(n):
        if session.done or session.turns > 25:
            session.reset(task, "solo")
        t0 = time.perf_counter()
        session.step(turn)
        samples.append((time.perf_counter() - t0) * 1e3)
    return _percentiles(samples)


def _percentiles(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"p50": round(s[len(s) // 2], 3), "p95": round(s[int(len(s) * 0.95)], 3), "n": len(s)}


def actor_eps(pool, tasks, mode: str) -> float:
    start = time.perf_counter()
    started = pool.reset_many(tasks, mode)
    sids = [sid for sid, _ in started]
    plans = dict(zip(sids, (oracle_turns(t, mode) for t in tasks)))
    turn = 0
    while True:
        batch = [(sid, plans[sid][turn]) for sid in sids
                 if turn < len(plans[sid]) and not pool.records[sid].counters["done"]]
        if not batch:
            break
        pool.step_many(batch)
        turn += 1
    results = pool.evaluate_many(sids)
    elapsed = time.perf_counter() - start
    pool.close_many(sids)
    assert all(r["success"] for r in results)
    return len(tasks) / elapsed


def actor_tool_call_latency_ms(pool, n: int = 100) -> dict:
    sid, _ = pool.reset(load_split("small")[0], "solo")
    turn = tool_call_text("check_network_status", {})
    samples = []
    for i in range(n):
        if i and i % 25 == 0:
            pool.close_many([sid])
            sid, _ = pool.reset(load_split("small")[0], "solo")
        t0 = time.perf_counter()
        pool.step(sid, turn)
        samples.append((time.perf_counter() - t0) * 1e3)
    pool.close_many([sid])
    return _percentiles(samples)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=114, help="episodes per arm and round (base split)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mode", choices=("solo", "dual"), default="solo")
    ap.add_argument("--no-ray", action="store_true", help="skip the actor measurements")
    ap.add_argument("--out", default="bench_results/env.json")
    args = ap.parse_args(argv)
    tasks = load_split("base")[: args.tasks]
    for kind in ARMS:  # warm-up: parse, import, first-call costs out of the timings
        in_process_eps(kind, tasks[:3], args.mode)

    report: dict = {"tasks": len(tasks), "mode": args.mode, "rounds": args.rounds}
    eps = {k: [] for k in ARMS}
    for _ in range(args.rounds):
        for kind in ARMS:
            eps[kind].append(in_process_eps(kind, tasks, args.mode))
    report["in_process_episodes_per_s"] = {k: round(statistics.median(v), 1) for k, v in eps.items()}
    report["in_process_ratio"] = round(statistics.median(eps["cached"]) / statistics.median(eps["tau2_per_episode"]), 2)
    report["tool_call_latency_ms"] = tool_call_latency_ms()

    if not args.no_ray:
        import ray

        from actors.env_worker import EnvPool, EnvSettings
        from rl.runtime import init_ray

        init_ray(None, 2, log_to_driver=False)
        pools = {k: EnvPool(EnvSettings(world=k), num_workers=args.workers) for k in ARMS}
        for k in ARMS:
            actor_eps(pools[k], tasks[:4], args.mode)  # warm-up
        actor = {k: [] for k in ARMS}
        for _ in range(args.rounds):
            for k in ARMS:
                actor[k].append(actor_eps(pools[k], tasks, args.mode))
        report["actor_episodes_per_s"] = {k: round(statistics.median(v), 1) for k, v in actor.items()}
        report["actor_ratio"] = round(statistics.median(actor["cached"])
                                      / statistics.median(actor["tau2_per_episode"]), 2)
        report["actor_tool_call_latency_ms"] = actor_tool_call_latency_ms(pools["cached"])
        report["actor_workers"] = args.workers
        for p in pools.values():
            p.shutdown()
        ray.shutdown()

    return finish(report, args.out, _print)


def _print(r: dict) -> None:
    print(f"\n== env benchmark: gold replay, {r['tasks']} base tasks, {r['mode']} mode, "
          f"median of {r['rounds']} rounds ==")
    ip = r["in_process_episodes_per_s"]
    print(f"in-process  episodes/s: cached world {ip['cached']:>8}   tau2 constructor per episode "
          f"{ip['tau2_per_episode']:>8}   ratio {r['in_process_ratio']}x (goal >= 3x)")
    if "actor_episodes_per_s" in r:
        a = r["actor_episodes_per_s"]
        print(f"EnvWorker x{r['actor_workers']} episodes/s: cached world {a['cached']:>8}   "
              f"tau2 constructor per episode "
              f"{a['tau2_per_episode']:>8}   ratio {r['actor_ratio']}x (goal >= 3x)")
    lat = r["tool_call_latency_ms"]
    print(f"tool-call latency (session.step, in-process): p50 {lat['p50']} ms  p95 {lat['p95']} ms")
    if "actor_tool_call_latency_ms" in r:
        lat = r["actor_tool_call_latency_ms"]
        print(f"tool-call latency (through the actor, round trip): p50 {lat['p50']} ms  p95 {lat['p95']} ms")


if __name__ == "__main__":
    main()
