"""telerl beside TRL's GRPOTrainer, the peer a laptop user would pick, on the same work in one run.

    python -m bench.bench_trl [--model PATH] [--tasks 4] [--group 8] [--steps 3] [--rounds 1]
                              [--out bench_results/trl.json] [key=value ...]

Both arms train GRPO from the same model on the same --tasks training tasks of configs/learn_tiny.yaml, each task
--group times per optimizer step, in solo mode through our TelecomSession (TRL: `environment_factory`, the
session's tools as the environment's methods, tau2's evaluator as `get_reward`). Each arm is its own process, the
way a user runs it: TRL one Python process on every core (`GRPOTrainer` on a laptop: transformers' generate, its
tool loop, one model); telerl rl.train's Trainer (Ray, one vLLM engine in its actor, two ZeRO-3 learner ranks, an
env worker). An arm trains 1 + --steps optimizer steps; the first pays first-call costs and is not timed. The arms
run telerl, TRL (then TRL, telerl with --rounds 2, ...); medians per arm. Read: seconds per optimizer step, and over
the rollout phase episodes/s and generated tokens/s; the ratio telerl / TRL for each (higher is telerl's way).

The same in both: learn_tiny's settings (key=value overrides apply to both arms): the prompt (`env.prompt: minimal`:
tau2's solo instructions, the ticket and one `name(args)` line per tool, the prompt the learning recipe trains and
its SFT start knows), temperature 0.7, at most 64 new tokens a turn, 30 turns and 4096 tokens an episode, the reward
(tau2's verdict + 0.25 x env assertions + 0.25 x actions), float32, AdamW at lr 1e-4, micro batches of 4 episodes,
one optimizer step per rollout batch, no KL term, no reference model.

What TRL cannot express, and how this bench bridges it (both arms' numbers say what happened):
- TRL always hands the environment's tools to the chat template as JSON schemas, built from Python signatures and
  Google docstrings. With the minimal prompt the system prompt lists the tools already, so the TRL arm's template
  skips the schemas and both arms' prompts are the same tokens. With `env.prompt=compact` TRL renders its own
  schemas: each argument needs a description there (it gets its name), so TRL's prompt is a little longer. Both
  prompt lengths are printed.
- The environment cannot end an episode: TRL's loop goes on while the model calls tools. After tau2's `done` (or
  a turn / error limit) the session answers every call with "the episode is over", and TRL generates until the
  model stops calling tools or the episode's token budget is spent. Turns per episode are printed for both.
- Malformed tool calls: TRL's parser takes text it cannot read as a call for a final answer (the episode ends),
  and answers a call to an unknown tool itself; telerl answers both with an error observation and the agent goes
  on. TRL's environment never sees such calls, so it cannot subtract learn_tiny's malformed-call penalty (the
  telerl arm runs without it too) nor count them toward the session's error limit.
- Training: TRL runs a forward and backward over every episode of the step; telerl over those with a nonzero
  advantage (without a KL term a zero one adds no gradient), and the bench prints how many that was. Each uses its
  own GRPO loss (TRL 1.16's default "dapo" aggregation, telerl's token mean).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import finish

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/learn_tiny.yaml"
TRL_VERSION = "1.16.0"  # the version this bench was written and measured against (requirements/bench.txt)
# learn_tiny.yaml without the malformed-call penalty (TRL never shows the environment a call it could not parse),
# the held-out evaluation and checkpoints (neither is part of a step).
OVERRIDES = ["reward.malformed_call_penalty=0", "train.eval_tasks=0", "train.checkpoint_every=1000", "train.steps=1000"]
# Prepended to the chat template for TRL when the system prompt lists the tools itself (env.prompt=minimal).
NO_SCHEMAS = "{%- set tools = none %}"
OVER_MESSAGE = "The episode is over; no more tool calls are run."
JSON_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "object": dict, "array": list}


# ------------------------------------------------------------------ shared settings
def load_bench_config(model: str, tasks: list[str] | None, group: int, overrides: list[str] = ()):
    from rl.config import load_config

    cfg = load_config(str(CONFIG), [*OVERRIDES, *overrides, f"model.name={model}", f"algorithm.group_size={group}"])
    if tasks:  # set here, not as an override: tau2's task ids hold brackets, colons and '|'
        cfg.train.task_ids, cfg.train.tasks_per_step = list(tasks), len(tasks)
    return cfg


def pick_tasks(n: int, overrides: list[str] = ()) -> list[str]:
    """n training tasks of learn_tiny.yaml drawn with a fixed seed: the same tasks for both arms."""
    import random

    from rl.runtime import split_tasks

    ids = sorted(split_tasks(load_bench_config("tiny", None, 8, overrides)).train)
    return random.Random(0).sample(ids, n)


def env_world(cfg):
    """The env workers' settings for this config and the world they build sessions on (limits, call limits, prompt)."""
    from actors.env_worker import EnvSettings
    from envs.tau2_telecom.world import get_world

    settings = EnvSettings.from_config(cfg)
    return settings, get_world(settings.policy, settings.call_limits, settings.world)


def first_observations(spec: dict) -> dict:
    """Each task's opening observation in the bench's settings: the system prompt, the ticket, the tool schemas."""
    from envs.tau2_telecom import tau2_api as t2
    from rl.runtime import split_tasks

    cfg = load_bench_config(spec["model"], spec["tasks"], spec["group"], spec["overrides"])
    settings, world = env_world(cfg)
    session, tasks = settings.new_session(world), split_tasks(cfg).train
    return {tid: session.reset(t2.Task.model_validate(tasks[tid]), mode="solo") for tid in spec["tasks"]}


# ------------------------------------------------------------------ the TRL arm
def tool_method(name: str, schema: dict):
    """A method TRL can expose as a tool: the signature and docstring transformers' get_json_schema reads, built
    from the session's compact schema; calling it runs the call in the episode's TelecomSession."""
    params = schema.get("parameters", {}).get("properties", {})
    required = set(schema.get("parameters", {}).get("required", []))

    def call(self, **arguments):
        return self._run_tool(name, arguments)

    kinds = {p: JSON_TYPES.get(spec.get("type"), str) for p, spec in params.items()}
    call.__name__ = call.__qualname__ = name
    call.__annotations__ = dict(kinds)
    call.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, annotation=kinds[p],
                             default=inspect.Parameter.empty if p in required else None) for p in params])
    doc = schema.get("description") or name
    if params:
        doc += "\n\nArgs:\n" + "".join(f"    {p}: {p.replace('_', ' ')}\n" for p in params)
    call.__doc__ = doc
    return call


def telecom_env_class(cfg):
    """TRL's environment: one TelecomSession per rollout (built as the env workers build theirs), reset by task id,
    its tools as methods."""
    from envs.tau2_telecom import tau2_api as t2
    from rl.rewards import check_score
    from rl.runtime import split_tasks

    settings, world = env_world(cfg)
    tasks = split_tasks(cfg).train

    class TelecomTRLEnv:
        endings: list[dict] = []  # per finished rollout: how its session ended (read by the bench, per step)

        def __init__(self):
            self.session = settings.new_session(world)

        def reset(self, task_id: str, **_):
            self.session.reset(t2.Task.model_validate(tasks[task_id]), mode="solo")
            return None  # the prompt (system prompt + ticket) is the dataset row's

        def _run_tool(self, name: str, arguments: dict) -> str:
            if self.session.done:
                return OVER_MESSAGE
            turn = {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]}
            return "\n".join(m["content"] or "" for m in self.session.step(turn).messages)

        def get_reward(self) -> float:
            result = self.session.evaluate()
            TelecomTRLEnv.endings.append({"termination": self.session.termination or "model stopped calling tools",
                                          "success": result.success})
            return check_score(result, cfg.reward)[0]  # the reward actor's checks, with the same weights

    for schema in world.tool_schemas("solo", compact=True):
        fn = schema["function"]
        setattr(TelecomTRLEnv, fn["name"], tool_method(fn["name"], fn))
    return TelecomTRLEnv


def run_trl(spec: dict) -> dict:
    import datasets
    import torch
    import transformers
    import trl
    from trl.chat_template_utils import qwen3_template

    cfg = load_bench_config(spec["model"], spec["tasks"], spec["group"], spec["overrides"])
    torch.manual_seed(cfg.seed)
    tok = transformers.AutoTokenizer.from_pretrained(spec["model"])
    tok.padding_side = "left"
    # Our template writes tool calls as Qwen2.5/Hermes does; TRL only recognises templates it ships, so its parser
    # for that format is set by hand.
    tok.response_template = qwen3_template
    if cfg.env.prompt == "minimal":
        tok.chat_template = NO_SCHEMAS + tok.chat_template
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    rows = [{"prompt": obs.messages, "task_id": tid} for tid, obs in first_observations(spec).items()]
    env_class = telecom_env_class(cfg)
    n_episodes = len(rows) * cfg.algorithm.group_size
    args = trl.GRPOConfig(
        output_dir=spec["workdir"], use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=cfg.seed, max_steps=1 + spec["steps"],
        learning_rate=cfg.learner.lr, num_generations=cfg.algorithm.group_size, beta=0.0,
        per_device_train_batch_size=cfg.learner.micro_batch_size,
        gradient_accumulation_steps=n_episodes // cfg.learner.micro_batch_size,
        temperature=cfg.rollout.temperature, max_completion_length=cfg.rollout.max_model_len,
        max_tool_calling_iterations=cfg.env.max_turns - 1,
        generation_kwargs={"max_new_tokens": cfg.rollout.max_new_tokens})
    records: list[dict] = []

    class TimedGRPOTrainer(trl.GRPOTrainer):
        """GRPOTrainer, timing its rollout phase (generation, tool calls) and counting what it generated."""

        def _generate(self, prompts):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            completion_ids, tool_mask = out[1], out[2]
            generated = sum(sum(m) for m in tool_mask) if tool_mask is not None else sum(map(len, completion_ids))
            turns = [sum(1 for m in c if m.get("role") == "assistant") for c in out[3]]
            records.append({"rollout_s": time.perf_counter() - t0, "episodes": len(prompts), "trained": len(prompts),
                            "generated_tokens": generated, "turns": statistics.mean(turns),
                            "prompt_tokens": statistics.mean(len(p) for p in out[0])})
            return out

    class StepClock(transformers.TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            records[-1].update(step_s=time.perf_counter() - self.t0, **endings(env_class.endings))
            env_class.endings.clear()

    trainer = TimedGRPOTrainer(model=model, processing_class=tok, args=args,
                               train_dataset=datasets.Dataset.from_list(rows), environment_factory=env_class,
                               callbacks=[StepClock()])
    trainer.train()
    return {"steps": records, "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                                           "torch": torch.__version__, "threads": torch.get_num_threads()}}


# ------------------------------------------------------------------ the telerl arm
def run_telerl(spec: dict) -> dict:
    import ray

    from rl.run_dir import read_jsonl
    from rl.train import Trainer

    cfg = load_bench_config(spec["model"], spec["tasks"], spec["group"], spec["overrides"])
    cfg.run_dir = f"{spec['workdir']}/run"
    trainer, records = Trainer(cfg), []
    try:
        while len(records) < 1 + spec["steps"]:
            t0 = time.perf_counter()
            m = trainer.train_step()
            if m is None:
                raise RuntimeError("a learner rank failed during the bench")
            records.append({"step_s": time.perf_counter() - t0, "episodes": m["episodes"],
                            "rollout_s": m["time/generate"] + m["time/env"],
                            "generated_tokens": m["episode/generated_tokens"] * m["episodes"],
                            "turns": m["episode/turns"], "trained": m["train/sequences"]})
        episodes = read_jsonl(trainer.run.path / "trajectories.jsonl")
        for i, record in enumerate(records, start=1):
            record.update(endings([{"termination": e["termination"], "success": e["components"]["success"] == 1}
                                   for e in episodes if e["step"] == i]))
    finally:
        trainer.close()
        ray.shutdown()
    return {"steps": records}


def endings(episodes: list[dict]) -> dict:
    """How a step's episodes ended (termination -> count) and the share tau2 passed."""
    return {"terminations": dict(Counter(e["termination"] for e in episodes)),
            "success": sum(e["success"] for e in episodes) / max(1, len(episodes))}


# ------------------------------------------------------------------ driver
def telerl_prompt_tokens(spec: dict) -> float:
    """Mean prompt length of the telerl arm's episodes: the session's first messages and tool schemas, rendered by
    the model's chat template (what the rollout worker sends to vLLM)."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(spec["model"])
    return statistics.mean(len(tok.apply_chat_template(obs.messages, tools=obs.tools, add_generation_prompt=True,
                                                       tokenize=True, return_dict=True)["input_ids"])
                           for obs in first_observations(spec).values())


def run_arm(arm: str, spec: dict) -> dict:
    """One arm in a fresh process (its own Ray cluster / torch threads), as a user would run it."""
    with tempfile.TemporaryDirectory(prefix=f"bench_trl_{arm}_") as tmp:
        spec = {**spec, "workdir": tmp}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        out = Path(tmp) / "result.json"
        env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "RAY_DISABLE_USAGE_STATS": "1"}
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "bench.bench_trl", "--arm", arm, "--spec", str(Path(tmp)),
                               "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"bench_trl: the {arm} arm failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        result = json.loads(out.read_text())
    result["process_s"] = time.perf_counter() - t0
    return result


def summarize(runs: list[dict]) -> dict:
    """Medians over the timed steps (the first step of every run is not timed)."""
    steps = [s for r in runs for s in r["steps"][1:]]
    med = lambda key: statistics.median(s[key] for s in steps)  # noqa: E731
    return {"step_s": med("step_s"), "rollout_s": med("rollout_s"), "episodes": med("episodes"),
            "episodes_per_s": statistics.median(s["episodes"] / s["rollout_s"] for s in steps),
            "tokens_per_s": statistics.median(s["generated_tokens"] / s["rollout_s"] for s in steps),
            "generated_tokens": med("generated_tokens"), "turns": med("turns"), "trained": med("trained"),
            "success": statistics.mean(s["success"] for s in steps),
            "terminations": dict(sum((Counter(s["terminations"]) for s in steps), Counter())),
            "first_step_s": statistics.median(r["steps"][0]["step_s"] for r in runs),
            "process_s": statistics.median(r["process_s"] for r in runs)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="model.name for both arms (a folder, tiny, smollm2-135m)")
    ap.add_argument("--tasks", type=int, default=4, help="training tasks per step (the same every step)")
    ap.add_argument("--group", type=int, default=8, help="episodes per task per step")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per arm and round")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each arm, alternating the order")
    ap.add_argument("--out", default="bench_results/trl.json")
    ap.add_argument("--arm", choices=("trl", "telerl"), help=argparse.SUPPRESS)  # internal: one arm's process
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides for both arms, key=value")
    args = ap.parse_args(argv)
    if args.arm:  # inside one arm's process
        spec = json.loads((Path(args.spec) / "spec.json").read_text())
        result = run_trl(spec) if args.arm == "trl" else run_telerl(spec)
        Path(args.out).write_text(json.dumps(result))
        return result

    try:
        import trl
    except ImportError:
        raise SystemExit(f"bench_trl needs TRL: pip install trl=={TRL_VERSION} (requirements/bench.txt)") from None
    from rl.models import resolve_model

    cfg = load_bench_config("tiny", None, args.group, args.overrides)
    model = str(resolve_model(args.model, dataclasses.asdict(cfg.model.tiny)))
    spec = {"model": model, "tasks": pick_tasks(args.tasks, args.overrides), "group": args.group, "steps": args.steps,
            "overrides": args.overrides}
    report = {"model": model, "tasks": spec["tasks"], "group": args.group, "steps": args.steps,
              "overrides": args.overrides, "prompt": cfg.env.prompt,
              "rounds": args.rounds, "trl_version": trl.__version__, "cpus": os.cpu_count(),
              "load_avg_start": os.getloadavg()}
    runs: dict[str, list[dict]] = {"telerl": [], "trl": []}
    for r in range(args.rounds):
        for arm in (("telerl", "trl") if r % 2 == 0 else ("trl", "telerl")):
            print(f"bench_trl: round {r + 1}, {arm} ...", end="", flush=True)
            runs[arm].append(run_arm(arm, spec))
            print(f" {runs[arm][-1]['process_s']:.0f} s", flush=True)
    report["runs"] = runs
    report["telerl"], report["trl"] = summarize(runs["telerl"]), summarize(runs["trl"])
    report["prompt_tokens"] = {"telerl": telerl_prompt_tokens(spec), "trl": runs["trl"][0]["steps"][0]["prompt_tokens"]}
    t, h = report["telerl"], report["trl"]
    report["ratio"] = {"step": h["step_s"] / t["step_s"], "episodes_per_s": t["episodes_per_s"] / h["episodes_per_s"],
                       "tokens_per_s": t["tokens_per_s"] / h["tokens_per_s"]}
    report["load_avg_end"] = os.getloadavg()
    return finish(report, args.out, _print)


def _print(r: dict) -> None:
    print(f"\n== telerl vs TRL {r['trl_version']} GRPOTrainer: {Path(r['model']).name}, {len(r['tasks'])} tasks x "
          f"{r['group']} episodes a step, {r['steps']} timed steps x {r['rounds']} run(s) per arm, {r['cpus']} CPUs "
          f"(load avg at start {r['load_avg_start'][0]:.1f}) ==")
    print(f"{'':8} {'s/step':>8} {'rollout s':>10} {'episodes/s':>11} {'gen tok/s':>10} {'tokens/ep':>10} "
          f"{'turns/ep':>9} {'trained':>8} {'1st step s':>11} {'process s':>10}")
    for name in ("telerl", "trl"):
        a = r[name]
        print(f"{name:8} {a['step_s']:8.1f} {a['rollout_s']:10.1f} {a['episodes_per_s']:11.2f} "
              f"{a['tokens_per_s']:10.0f} {a['generated_tokens'] / a['episodes']:10.0f} {a['turns']:9.1f} "
              f"{a['trained']:8.0f} {a['first_step_s']:11.1f} {a['process_s']:10.0f}")
    for name in ("telerl", "trl"):
        a = r[name]
        ends = ", ".join(f"{k} {v}" for k, v in sorted(a["terminations"].items(), key=lambda kv: -kv[1]))
        print(f"{name}: tau2 passed {a['success']:.2f} of the timed episodes; they ended by: {ends}")
    x = r["ratio"]
    print(f"telerl / TRL: {x['step']:.2f}x faster per optimizer step, episodes/s {x['episodes_per_s']:.2f}x, "
          f"generated tokens/s {x['tokens_per_s']:.2f}x (goal >= 3x); prompt tokens: telerl "
          f"{r['prompt_tokens']['telerl']:.0f}, TRL {r['prompt_tokens']['trl']:.0f}")


if __name__ == "__main__":
    main()
