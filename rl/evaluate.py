"""Evaluate an agent the way tau2-bench does: pass^1..pass^k over trials, in tau2's own results format.

    python -m rl.evaluate --agent expert --split test --trials 4 --out runs/eval/expert
    python -m rl.evaluate --agent oracle --tasks my_tasks.json --mode dual --limit 10 --out runs/eval/oracle

Agents: `--agent expert` (the diagnosing expert, envs/tau2_telecom/expert.py: sees only the conversation) or
`--agent oracle` (each task's gold actions). Trained models are evaluated during training (`rl.train`
train.eval_tasks / eval_trials, or train.steps=0 for a checkpoint); a `--model` / `--endpoint` agent here is
issue 13's next step.

Output folder: episodes.jsonl (one row per (task, trial), written as each finishes), report.json (`pass_hat_k` as
{"1": ..., "k": ...}, `avg_reward`, success per issue family and per number of faults, terminations, failures by
cause, turns / tool calls per episode), report.md, and tau2_results.json (tau2's `Results`: tau2's
`compute_metrics` and viewer read it). Ctrl-C keeps what finished; `--resume` skips the (task, trial) pairs
already in episodes.jsonl. Exit status 2 for unusable input (unknown split, broken task file, existing output
without --resume).
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from tqdm import tqdm

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.choices import MODES, POLICIES, SPLITS
from envs.tau2_telecom.expert import play_expert
from envs.tau2_telecom.oracle import play_oracle
from envs.tau2_telecom.session import SessionLimits, TelecomSession
from envs.tau2_telecom.tasks import TaskFileError, load_split, load_task_file
from envs.tau2_telecom.users import ScriptedUser
from envs.tau2_telecom.world import get_world
from rl.eval_report import EpisodeOutcome, build_report, write_report_files
from rl.run_dir import read_jsonl
from rl.tau2_export import tau2_results

SCRIPTED_AGENTS = {"expert": play_expert, "oracle": play_oracle}


def run_episode(session: TelecomSession, task: t2.Task, mode: str, agent: str, trial: int) -> EpisodeOutcome:
    """One episode of a scripted agent, scored by tau2. An exception inside the agent is recorded (agent_error),
    never raised: the evaluation goes on."""
    try:
        session.reset(task, mode)
        SCRIPTED_AGENTS[agent](session, task, mode)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", choices=SPLITS, help="one of tau2's telecom splits")
    src.add_argument("--tasks", metavar="FILE", help="a tau2 task file (JSON)")
    ap.add_argument("--agent", choices=sorted(SCRIPTED_AGENTS), required=True)
    ap.add_argument("--mode", choices=MODES, default="solo")
    ap.add_argument("--policy", choices=POLICIES, default="manual")
    ap.add_argument("--trials", type=int, default=1, help="episodes per task (pass^1 .. pass^trials)")
    ap.add_argument("--limit", type=int, default=None, help="the first N tasks only")
    ap.add_argument("--max-turns", type=int, default=SessionLimits.max_turns)
    ap.add_argument("--max-errors", type=int, default=SessionLimits.max_errors)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--resume", action="store_true", help="keep the episodes already in --out, run the rest")
    args = ap.parse_args(argv)
    if args.trials < 1 or (args.limit is not None and args.limit < 1):
        ap.error("--trials and --limit must be >= 1")

    # -- input, checked before any episode runs
    try:
        tasks, tasks_from = _tasks(args)
    except (TaskFileError, OSError) as e:
        print(f"rl.evaluate: {e}", file=sys.stderr)
        return 2
    tasks = tasks[: args.limit] if args.limit else tasks
    if args.mode == "solo":
        tasks = [t for t in tasks if t.ticket]  # tau2's solo mode starts from the ticket
    out = Path(args.out)
    episodes_file = out / "episodes.jsonl"
    if episodes_file.exists() and not args.resume:
        print(f"rl.evaluate: {out} already holds an evaluation; pass --resume to finish it, or choose another --out",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)

    # -- episodes: each written as it finishes, so Ctrl-C or a crash keeps them
    done = [EpisodeOutcome(**row) for row in read_jsonl(episodes_file)]
    finished = {(o.task_id, o.trial) for o in done}
    todo = [(t, k) for k in range(args.trials) for t in tasks if (t.id, k) not in finished]
    session = TelecomSession(get_world(args.policy), SessionLimits(max_turns=args.max_turns,
                                                                   max_errors=args.max_errors), user=ScriptedUser())
    bar = tqdm(todo, desc=f"{args.agent} ({args.mode})", unit="episode", file=sys.stderr, disable=None)
    try:
        with open(episodes_file, "a") as fh:
            for task, trial in bar:
                outcome = run_episode(session, task, args.mode, args.agent, trial)
                fh.write(json.dumps(outcome.row()) + "\n")
                fh.flush()
                done.append(outcome)
                bar.set_postfix(pass1=f"{sum(o.success for o in done) / len(done):.3f}")
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(done)} episodes kept in {episodes_file} (--resume runs the rest)", file=sys.stderr)

    # -- report, and tau2's own format
    ids = {t.id for t in tasks}
    done = [o for o in done if o.task_id in ids]
    report = build_report(done, {"agent": args.agent, "tasks_from": tasks_from, "mode": args.mode,
                                 "trials": args.trials, "policy": args.policy})
    write_report_files(report, out)
    results = tau2_results({t.id: t for t in tasks}, done, agent=args.agent,
                           user="scripted" if args.mode == "dual" else "none (solo)", policy=args.policy,
                           trials=args.trials, max_steps=args.max_turns, max_errors=args.max_errors, seed=None)
    results.save(out / "tau2_results.json")
    k = ", ".join(f"pass^{k} {v:.3f}" for k, v in report["pass_hat_k"].items())
    print(f"{args.agent} on {tasks_from} ({report['tasks']} tasks, {args.mode}): {k}; average reward "
          f"{report['avg_reward']:.3f}; report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
