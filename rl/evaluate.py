"""Evaluate an agent the way tau2-bench does: pass^1..pass^k over trials, in tau2's own results format.

    python -m rl.evaluate --model runs/learn_tiny --split test --trials 4 --out runs/eval/mine
    python -m rl.evaluate --model runs/demo/seed0/sft --split base --temperature 0.7 --trials 4 --out runs/eval/sft
    python -m rl.evaluate --model runs/demo/seed0/sft --config-tasks train --temperature 0.7 --trials 8 --out runs/s
    python -m rl.evaluate --endpoint http://127.0.0.1:8000/v1 --served-model Qwen3-4B --split test --out runs/eval/q
    python -m rl.evaluate --agent expert --split test --trials 4 --out runs/eval/expert
    python -m rl.evaluate --agent oracle --tasks my_tasks.json --mode dual --limit 10 --out runs/eval/oracle

Agents:
  --model RUN_DIR | MODEL_DIR | tiny | smollm2-135m   a policy on a vLLM engine, through the same actors and agent
           loop as rl.train (Ray, started locally or ray.address). A run directory means the policy it exported when
           it finished (RUN_DIR/model) and its config.yaml; a model folder written by rl.train or rl.sft carries its
           config as telerl.yaml. `--config FILE` and key=value overrides change it (e.g. env.user=llm user_llm...).
           Greedy unless --temperature > 0. `--config-tasks train | heldout`: the tasks that config trains on or
           holds out, split as rl.train splits them (sampling its training tasks k times gives rl.sft --from-rollouts
           its rejection-sampling data).
  --endpoint URL --served-model NAME   any OpenAI-compatible server: tools go out as OpenAI tools (--prompt full,
           tau2's own prompt, by default), tool_calls come back; API key from $TELERL_AGENT_API_KEY. --concurrency
           episodes run at once.
  --agent expert | oracle   the diagnosing expert (envs/tau2_telecom/expert.py: sees only the conversation) or each
           task's gold actions.

Output folder: episodes.jsonl (one row per (task, trial), written as each finishes), report.json (`pass_hat_k` as
{"1": ..., "k": ...}, `avg_reward`, success per issue family and per number of faults, terminations, failures by
cause, turns / tool calls / generated tokens per episode), report.md, and tau2_results.json (tau2's `Results`:
tau2's `compute_metrics` and viewer read it). Ctrl-C keeps what finished; `--resume` skips the (task, trial)
pairs already in episodes.jsonl. Exit status 2 for unusable input (unknown split, broken task file, a model folder
without weights, a bad config key, an unreachable endpoint, existing output without --resume), before any episode
runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.choices import MODES, POLICIES, PROMPTS, SPLITS, USERS
from envs.tau2_telecom.endpoint import LLMEndpoint
from envs.tau2_telecom.expert import play_expert
from envs.tau2_telecom.oracle import play_oracle
from envs.tau2_telecom.session import SessionLimits, TelecomSession
from envs.tau2_telecom.tasks import TaskFileError, load_split, load_task_file
from envs.tau2_telecom.users import ScriptedUser
from envs.tau2_telecom.world import get_world
from rl.actor_calls import ActorFailed
from rl.config import Config, ConfigError
from rl.eval_report import EpisodeOutcome, build_report, write_report_files
from rl.models import ModelNotFoundError
from rl.preflight import NotReady, check_endpoint
from rl.run_dir import read_jsonl
from rl.tau2_export import tau2_results

SCRIPTED_AGENTS = {"expert": play_expert, "oracle": play_oracle}
AGENT_API_KEY_ENV = "TELERL_AGENT_API_KEY"  # --endpoint's API key (never a flag: it would land in shell history)


def run_episode(session: TelecomSession, task: t2.Task, mode: str, play: Callable, trial: int) -> EpisodeOutcome:
    """One episode of an agent that drives the session itself (`play(session, task, mode)`: a scripted agent or an
    endpoint), scored by tau2. An exception inside the agent (an endpoint error) is recorded as agent_error, never
    raised: the evaluation goes on."""
    try:
        session.reset(task, mode)
        play(session, task, mode)
        res = session.evaluate()
    except Exception as e:  # noqa: BLE001 - one broken episode must not end the evaluation
        detail = traceback.format_exception_only(type(e), e)[-1].strip()
        return EpisodeOutcome(task.id, trial, 0.0, False, t2.TerminationReason.AGENT_ERROR.value,
                              failure="agent_error", note=f"exception: {detail}",
                              messages=[m.model_dump(mode="json") for m in session.trajectory])
    calls = sum(len(m.tool_calls or []) for m in session.trajectory if isinstance(m, t2.AssistantMessage))
    return EpisodeOutcome(task.id, trial, res.reward, res.success, res.termination, failure=res.failure,
                          note=res.note, turns=res.turns, tool_calls=calls,
                          messages=[m.model_dump(mode="json") for m in session.trajectory])


def _tasks(args) -> tuple[list[t2.Task], str]:
    if args.split:
        return load_split(args.split), f"split {args.split}"
    loaded = load_task_file(args.tasks)
    for problem in loaded.problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    if not loaded.tasks:
        raise TaskFileError(f"{args.tasks}: no loadable task")
    return loaded.tasks, args.tasks


def _config_tasks(cfg: Config, which: str) -> tuple[list[t2.Task], str]:
    """The training or held-out tasks of a config, exactly as rl.train and rl.sft split them (e.g. to sample a
    policy on its own training tasks for rejection sampling, or to evaluate it on what it never saw)."""
    from rl.runtime import split_tasks

    split = split_tasks(cfg)
    chosen = split.train if which == "train" else split.heldout
    if not chosen:
        raise ValueError(f"--config-tasks {which}: the config has no {which} tasks"
                         + (" (train.eval_tasks is 0)" if which == "heldout" else ""))
    return [t2.Task.model_validate(t) for t in chosen.values()], f"the config's {which} tasks"


def _model_overrides(args) -> list[str]:
    """--model: the flags given as config overrides, then the key=value ones (the policy's own config is the base)."""
    flags = {"env.mode": args.mode, "env.policy": args.policy, "env.user": args.user, "env.max_turns": args.max_turns,
             "env.max_errors": args.max_errors, "seed": args.seed}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None]
    if args.temperature > 0:
        overrides.append(f"rollout.temperature={args.temperature}")
    return [*overrides, *args.overrides]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", choices=SPLITS, help="one of tau2's telecom splits")
    src.add_argument("--tasks", metavar="FILE", help="a tau2 task file (JSON)")
    src.add_argument("--config-tasks", choices=("train", "heldout"),
                     help="--model: the tasks its config trains on, or the ones it holds out (rl.train's split)")
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="RUN_DIR | MODEL_DIR | tiny | smollm2-135m: a policy on a vLLM engine")
    who.add_argument("--agent", choices=sorted(SCRIPTED_AGENTS), help="a scripted agent")
    who.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--served-model", metavar="NAME", help="--endpoint: the model name the server serves")
    ap.add_argument("--prompt", choices=PROMPTS, default="full",
                    help="--endpoint: the system prompt and tool schemas it gets (default: tau2's full prompt)")
    ap.add_argument("--max-tokens", type=int, default=1024, help="--endpoint: completion tokens per turn")
    ap.add_argument("--config", metavar="FILE", help="--model: the telerl config (default: the model's own)")
    ap.add_argument("--mode", choices=MODES, default=None, help="default: the model's config, else solo")
    ap.add_argument("--policy", choices=POLICIES, default=None, help="default: the model's config, else manual")
    ap.add_argument("--user", choices=USERS, default=None, help="--model: the customer (default: the config's)")
    ap.add_argument("--temperature", type=float, default=0.0, help="--model, --endpoint: 0 = greedy (default)")
    ap.add_argument("--seed", type=int, default=None, help="--model: the sampling seed (default: the config's)")
    ap.add_argument("--concurrency", type=int, default=16, help="--model, --endpoint: episodes in flight at once")
    ap.add_argument("--trials", type=int, default=1, help="episodes per task (pass^1 .. pass^trials)")
    ap.add_argument("--limit", type=int, default=None, help="the first N tasks only")
    ap.add_argument("--max-turns", type=int, default=None,
                    help=f"default: the config's, else {SessionLimits.max_turns}")
    ap.add_argument("--max-errors", type=int, default=None,
                    help=f"default: the config's, else {SessionLimits.max_errors}")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--resume", action="store_true", help="keep the episodes already in --out, run the rest")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="--model: config overrides")
    args = ap.parse_intermixed_args(argv)
    if args.trials < 1 or (args.limit is not None and args.limit < 1) or args.concurrency < 1:
        ap.error("--trials, --limit and --concurrency must be >= 1")
    if not args.model and (args.overrides or args.config or args.user or args.seed is not None):
        ap.error("--config, key=value overrides, --user and --seed apply to --model only")
    if args.config_tasks and not args.model:
        ap.error("--config-tasks needs --model (the tasks come from the model's config)")
    if args.agent and args.temperature:
        ap.error("--temperature applies to --model and --endpoint, not to a scripted agent")
    if bool(args.endpoint) != bool(args.served_model):
        ap.error("--endpoint and --served-model go together")

    # -- input, checked before any episode runs
    cfg = model_path = None
    endpoint = (LLMEndpoint(model=f"openai/{args.served_model}", base_url=args.endpoint,
                            api_key=os.environ.get(AGENT_API_KEY_ENV, "EMPTY"), temperature=args.temperature,
                            max_tokens=args.max_tokens) if args.endpoint else None)
    try:
        if endpoint:
            check_endpoint("--endpoint", endpoint)
        if args.model:
            from rl.model_agent import load_policy

            cfg, model_path = load_policy(args.model, args.config, _model_overrides(args))
        tasks, tasks_from = _config_tasks(cfg, args.config_tasks) if args.config_tasks else _tasks(args)
    except (TaskFileError, OSError, ConfigError, ModelNotFoundError, NotReady, ValueError) as e:
        print(f"rl.evaluate: {e}", file=sys.stderr)
        return 2
    mode = cfg.env.mode if cfg else args.mode or "solo"
    policy = cfg.env.policy if cfg else args.policy or "manual"
    limits = (SessionLimits(cfg.env.max_turns, cfg.env.max_errors) if cfg else
              SessionLimits(max_turns=args.max_turns or SessionLimits.max_turns,
                            max_errors=args.max_errors or SessionLimits.max_errors))
    tasks = tasks[: args.limit] if args.limit else tasks
    if mode == "solo":
        tasks = [t for t in tasks if t.ticket]  # tau2's solo mode starts from the ticket
    out = Path(args.out)
    episodes_file = out / "episodes.jsonl"
    if episodes_file.exists() and not args.resume:
        print(f"rl.evaluate: {out} already holds an evaluation; pass --resume to finish it, or choose another --out",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)

    # -- episodes: each written as it finishes, so Ctrl-C or a crash keeps them
    name = args.agent or args.model or f"{args.served_model} @ {args.endpoint}"
    try:
        with _player(args, cfg, model_path, endpoint, mode, policy, limits) as play:
            play_into(episodes_file, tasks, args.trials, play, f"{name} ({mode})")
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(read_jsonl(episodes_file))} episodes kept in {episodes_file} (--resume runs the "
              f"rest)", file=sys.stderr)
    except ActorFailed as e:  # a dead or hung engine: one line, and what finished is kept
        print(f"rl.evaluate: stopped: {e}; {len(read_jsonl(episodes_file))} episodes kept in {episodes_file} "
              f"(--resume runs the rest)", file=sys.stderr)
        return 1

    # -- report, and tau2's own format
    user = (cfg.env.user if cfg else "scripted") if mode == "dual" else "none (solo)"
    report = write_evaluation(out, tasks, args.trials, limits, cfg.seed if cfg else None,
                              {"agent": name, "tasks_from": tasks_from, "mode": mode, "user": user,
                               "trials": args.trials, "policy": policy,
                               "temperature": None if args.agent else args.temperature})
    k = ", ".join(f"pass^{k} {v:.3f}" for k, v in report["pass_hat_k"].items())
    print(f"{name} on {tasks_from} ({report['tasks']} tasks, {mode}): {k}; average reward "
          f"{report['avg_reward']:.3f}; report: {out / 'report.md'}")
    return 0


def play_into(episodes_file: Path, tasks: list[t2.Task], trials: int, play: Callable, desc: str) -> None:
    """Every (task, trial) not yet in `episodes_file` played by `play` (an iterator of outcomes, as they finish),
    each appended as it ends: an interruption or a dead engine loses none of the finished ones."""
    finished = {(row["task_id"], row["trial"]) for row in read_jsonl(episodes_file)}
    todo = [(t, k) for k in range(trials) for t in tasks if (t.id, k) not in finished]
    bar = tqdm(total=len(todo), desc=desc, unit="episode", file=sys.stderr, disable=None)
    played = passed = 0
    try:
        with open(episodes_file, "a") as fh:
            for outcome in play(todo):
                fh.write(json.dumps(outcome.row()) + "\n")
                fh.flush()
                played += 1
                passed += outcome.success
                bar.update(1)
                bar.set_postfix(pass1=f"{passed / played:.3f}", refresh=False)
    finally:
        bar.close()


def write_evaluation(out: Path, tasks: list[t2.Task], trials: int, limits: SessionLimits, seed: int | None,
                     meta: dict) -> dict:
    """report.json / report.md and tau2's results file from the episodes of `tasks` in out/episodes.jsonl; the
    report. meta: who played (agent, mode, user, policy, temperature ...), as the report states it."""
    ids = {t.id for t in tasks}
    done = [o for o in (EpisodeOutcome(**row) for row in read_jsonl(out / "episodes.jsonl")) if o.task_id in ids]
    report = build_report(done, meta)
    write_report_files(report, out)
    results = tau2_results({t.id: t for t in tasks}, done, agent=meta["agent"], user=meta["user"],
                           policy=meta["policy"], trials=trials, max_steps=limits.max_turns,
                           max_errors=limits.max_errors, seed=seed)
    results.save(out / "tau2_results.json")
    return report


@contextmanager
def _player(args, cfg: Config | None, model_path: str | None, endpoint: LLMEndpoint | None, mode: str, policy: str,
            limits: SessionLimits):
    """play([(task, trial), ...]) -> their outcomes, each yielded as it finishes (--concurrency at a time)."""
    if args.model:
        from rl.model_agent import ModelAgent

        with ModelAgent(cfg, model_path) as agent:
            yield lambda pairs: agent.play([(t.model_dump(mode="json"), k) for t, k in pairs],
                                           args.temperature == 0, args.concurrency)
        return
    if args.agent:
        session = TelecomSession(get_world(policy), limits, user=ScriptedUser())
        yield lambda pairs: (run_episode(session, t, mode, SCRIPTED_AGENTS[args.agent], k) for t, k in pairs)
        return
    from rl.endpoint_agent import endpoint_player

    play = endpoint_player(endpoint)

    def one(pair):  # a session per episode: the endpoint's episodes run in threads
        session = TelecomSession(get_world(policy), limits, user=ScriptedUser(), prompt=args.prompt)
        return run_episode(session, pair[0], mode, play, pair[1])

    with ThreadPoolExecutor(args.concurrency) as pool:
        def run_all(pairs):
            futures = [pool.submit(one, pair) for pair in pairs]
            try:
                yield from (f.result() for f in as_completed(futures))
            finally:  # Ctrl-C or a stop: the episodes not started yet never start
                for f in futures:
                    f.cancel()

        yield run_all


if __name__ == "__main__":
    sys.exit(main())
