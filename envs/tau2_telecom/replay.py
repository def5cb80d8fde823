"""Replay tasks' gold actions through the session API and check tau2's evaluator agrees they solve the task.

    python -m envs.tau2_telecom.replay --split small
    python -m envs.tau2_telecom.replay --tasks ../shared/tau2-telecom/tasks_train.json --mode dual --json

Per task: passed_before (env assertions already hold on the initial state - true only for transfer tasks),
passed_after (they hold after the gold actions), reward (tau2's), errors (tool errors, rejected calls,
exceptions). Exit status 1 if any task fails to reach reward 1 or errors, 2 for unusable input.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from dataclasses import asdict, dataclass

from tqdm import tqdm

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.oracle import play_oracle
from envs.tau2_telecom.session import TelecomSession
from envs.tau2_telecom.tasks import SPLITS, TaskFileError, load_split, load_task_file
from envs.tau2_telecom.users import ScriptedUser
from envs.tau2_telecom.world import MODES, POLICIES, get_world


@dataclass
class ReplayResult:
    task_id: str
    passed_before: bool
    passed_after: bool
    reward: float
    termination: str | None
    errors: list[str]


def replay_task(session: TelecomSession, task: t2.Task, mode: str) -> ReplayResult:
    try:
        session.reset(task, mode)
        before = all(session.env_assertions_now())
        play_oracle(session, task, mode)
        after = all(session.env_assertions_now())
        res = session.evaluate()
        errors = [f"tool error: {m.content}" for m in session.trajectory if isinstance(m, t2.ToolMessage) and m.error]
        errors += [f"rejected call: {r['message']}" for r in session.rejected]
        if res.note and res.reward != 1.0:
            errors.append(res.note)
        return ReplayResult(task.id, before, after, res.reward, res.termination, errors)
    except Exception as e:  # report, keep going with the other tasks
        detail = traceback.format_exception_only(type(e), e)[-1].strip()
        return ReplayResult(task.id, False, False, 0.0, None, [f"exception: {detail}"])


def summarize(results: list[ReplayResult], load_problems: list[str]) -> dict:
    return {
        "tasks": len(results),
        "passed_before": sum(r.passed_before for r in results),
        "passed_after": sum(r.passed_after for r in results),
        "reward_1": sum(abs(r.reward - 1.0) < 1e-6 for r in results),
        "errors": sum(bool(r.errors) for r in results) + len(load_problems),
        "unloadable_tasks": len(load_problems),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", choices=SPLITS, help="one of tau2's packaged telecom splits")
    src.add_argument("--tasks", metavar="FILE", help="a tau2 task file (JSON)")
    ap.add_argument("--mode", choices=MODES, default="solo")
    ap.add_argument("--policy", choices=POLICIES, default="manual")
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N tasks")
    ap.add_argument("--json", action="store_true", help="print one JSON object (results + summary)")
    args = ap.parse_args(argv)

    problems: list[str] = []
    if args.split:
        tasks = load_split(args.split)
    else:
        try:
            loaded = load_task_file(args.tasks)
        except TaskFileError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        tasks, problems = loaded.tasks, loaded.problems
        for p in problems:
            print(f"warning: skipped {p}", file=sys.stderr)
    tasks = tasks[: args.limit] if args.limit else tasks

    session = TelecomSession(get_world(args.policy), user=ScriptedUser())
    results = [replay_task(session, t, args.mode)
               for t in tqdm(tasks, desc=f"replay ({args.mode})", unit="task", file=sys.stderr, disable=None)]
    summary = summarize(results, problems)
    if args.json:
        print(json.dumps({"summary": summary, "results": [asdict(r) for r in results],
                          "unloadable": problems}, indent=2))
    else:
        for r in results:
            flag = "ok  " if abs(r.reward - 1.0) < 1e-6 and not r.errors else "FAIL"
            print(f"{flag} before={int(r.passed_before)} after={int(r.passed_after)} reward={r.reward:.1f} "
                  f"{r.task_id}" + ("".join(f"\n       {e}" for e in r.errors)))
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0 if summary["reward_1"] == summary["tasks"] and summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
