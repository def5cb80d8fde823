"""Play tasks through the session API with the oracle (gold actions) or the expert, scored by tau2's evaluator.

    python -m envs.tau2_telecom.replay --split small
    python -m envs.tau2_telecom.replay --tasks ../shared/tau2-telecom/tasks_train.json --mode dual --json
    python -m envs.tau2_telecom.replay --split full --agent expert

--agent oracle (default) replays each task's gold actions: a check that the environment and tau2's evaluator
agree they solve the task. --agent expert runs the diagnosing expert (expert.py), which sees only the
conversation: a measure of how well tau2's own troubleshooting workflow solves the tasks.

Per task: passed_before (env assertions already hold on the initial state - true only for transfer tasks),
passed_after (they hold at the end of the episode), reward (tau2's), success (reward 1), errors. The summary
adds success per issue family (the bracketed prefix of the task id, e.g. mms_issue) and per number of faults
(the `|`-separated names between `]` and the next `[` of the id), printed as a table in text mode.

Exit status, oracle: 1 if any task fails to reach reward 1 or has errors (tool errors, rejected calls,
exceptions, an episode that tau2 does not score); expert: 1 only if there were errors (exceptions, tool
errors, rejected calls) - an episode the expert fails is a result, not an error (`note` says why when tau2 did
not score it).
Both: 2 for unusable input; unloadable tasks in a task file count as errors.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from dataclasses import asdict, dataclass

from tqdm import tqdm

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.expert import play_expert
from envs.tau2_telecom.oracle import play_oracle
from envs.tau2_telecom.session import TelecomSession
from envs.tau2_telecom.tasks import SPLITS, TaskFileError, load_split, load_task_file, task_family, task_faults
from envs.tau2_telecom.users import ScriptedUser
from envs.tau2_telecom.world import MODES, POLICIES, get_world

AGENTS = ("oracle", "expert")


@dataclass
class ReplayResult:
    task_id: str
    passed_before: bool
    passed_after: bool
    reward: float
    termination: str | None
    errors: list[str]
    success: bool = False
    turns: int = 0  # assistant turns played
    note: str | None = None  # why tau2 scored the episode as it did, when it says (e.g. not an agent/user stop)


def replay_task(session: TelecomSession, task: t2.Task, mode: str, agent: str = "oracle") -> ReplayResult:
    try:
        session.reset(task, mode)
        before = all(session.env_assertions_now())
        episode = (play_expert if agent == "expert" else play_oracle)(session, task, mode)
        after = all(session.env_assertions_now())
        res = session.evaluate()
        errors = [f"tool error: {m.content}" for m in session.trajectory if isinstance(m, t2.ToolMessage) and m.error]
        errors += [f"rejected call: {r['message']}" for r in session.rejected]
        if res.note and res.reward != 1.0 and agent == "oracle":
            errors.append(res.note)
        return ReplayResult(task.id, before, after, res.reward, res.termination, errors, success=res.success,
                            turns=len(episode.turns), note=res.note)
    except Exception as e:  # report, keep going with the other tasks
        detail = traceback.format_exception_only(type(e), e)[-1].strip()
        return ReplayResult(task.id, False, False, 0.0, None, [f"exception: {detail}"])


def _breakdown(results: list[ReplayResult], key) -> dict:
    groups: dict = {}
    for r in results:
        g = groups.setdefault(key(r.task_id), {"tasks": 0, "success": 0})
        g["tasks"] += 1
        g["success"] += r.success
    for g in groups.values():
        g["rate"] = round(g["success"] / g["tasks"], 4)
    return {k: groups[k] for k in sorted(groups, key=lambda k: (isinstance(k, str), k))}


def summarize(results: list[ReplayResult], load_problems: list[str]) -> dict:
    success = sum(r.success for r in results)
    return {
        "tasks": len(results),
        "passed_before": sum(r.passed_before for r in results),
        "passed_after": sum(r.passed_after for r in results),
        "reward_1": sum(abs(r.reward - 1.0) < 1e-6 for r in results),
        "errors": sum(bool(r.errors) for r in results) + len(load_problems),
        "unloadable_tasks": len(load_problems),
        "success": success,  # episodes with tau2 reward 1 (tau2's success), as reward_1
        "success_rate": round(success / len(results), 4) if results else 0.0,
        "by_family": _breakdown(results, task_family),
        "by_faults": {str(k): v for k, v in _breakdown(results, lambda i: len(task_faults(i))).items()},
    }


def summary_table(summary: dict) -> list[str]:
    """Success per issue family and per number of faults, as a compact text table."""
    rows = [("family", name, g) for name, g in summary["by_family"].items()]
    rows += [("faults", n, g) for n, g in summary["by_faults"].items()]
    lines = [f"{'group':<7} {'value':<18} {'tasks':>5} {'success':>7} {'rate':>6}"]
    lines += [f"{kind:<7} {name:<18} {g['tasks']:>5} {g['success']:>7} {g['rate']:>6.3f}" for kind, name, g in rows]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", choices=SPLITS, help="one of tau2's packaged telecom splits")
    src.add_argument("--tasks", metavar="FILE", help="a tau2 task file (JSON)")
    ap.add_argument("--agent", choices=AGENTS, default="oracle",
                    help="oracle: the task's gold actions; expert: the diagnosing expert (sees only the chat)")
    ap.add_argument("--mode", choices=MODES, default="solo")
    ap.add_argument("--policy", choices=POLICIES, default="manual")
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N tasks")
    ap.add_argument("--json", action="store_true", help="print one JSON object (results + summary)")
    ap.add_argument("--summary", action="store_true", help="print only the summary, not a line per task")
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
    results = [replay_task(session, t, args.mode, args.agent)
               for t in tqdm(tasks, desc=f"{args.agent} ({args.mode})", unit="task", file=sys.stderr, disable=None)]
    summary = summarize(results, problems)
    if args.json:
        print(json.dumps({"summary": summary, "results": [asdict(r) for r in results],
                          "unloadable": problems}, indent=2))
    else:
        for r in [] if args.summary else results:
            flag = "ok  " if abs(r.reward - 1.0) < 1e-6 and not r.errors else "FAIL"
            notes = r.errors + ([r.note] if r.note and not r.success and r.note not in r.errors else [])
            print(f"{flag} before={int(r.passed_before)} after={int(r.passed_after)} reward={r.reward:.1f} "
                  f"{r.task_id}" + ("".join(f"\n       {e}" for e in notes)))
        print("\n".join(summary_table(summary)))
        print(" ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict)))
    if args.agent == "expert":
        return 0 if summary["errors"] == 0 else 1
    return 0 if summary["reward_1"] == summary["tasks"] and summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
