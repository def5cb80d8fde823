"""The command line `python -m rl.rm.pairs {tau2,rollouts,teleqna} ... --out FILE`: builds the pairs of one
source, writes them as pair JSONL and prints the Report.
"""
from __future__ import annotations

import argparse
import sys
import time

import rl.rm.pairs as package
from rl.rm.pairs.format import write_pairs
from rl.rm.pairs.perturbations import ALL_KINDS, oracle_perturbation_pairs
from rl.rm.pairs.report import Report
from rl.rm.pairs.rollouts import rollout_pairs
from rl.rm.pairs.teleqna import teleqna_pairs


def _training_tasks(config: str) -> list:
    from envs.tau2_telecom.tau2_api import Task
    from rl.config import load_config
    from rl.runtime import split_tasks

    return [Task.model_validate(t) for t in split_tasks(load_config(config)).train.values()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rl.rm.pairs", description=package.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="source", required=True)
    t = sub.add_parser("tau2", help="oracle conversations vs verifier-failed perturbations")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", help="one of tau2's telecom splits (small, train, test, base, full)")
    src.add_argument("--tasks", metavar="FILE", help="a tau2 task file (JSON)")
    src.add_argument("--training-tasks-of", metavar="CONFIG",
                     help="the training tasks of an rl.train / rl.rft config (never its held-out or validation ones)")
    t.add_argument("--mode", choices=("solo", "dual"), default="solo")
    t.add_argument("--kinds", default=",".join(ALL_KINDS), help=f"comma-separated subset of {','.join(ALL_KINDS)}")
    t.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--policy", choices=("manual", "workflow"), default="manual")
    t.add_argument("--prompt", choices=("compact", "full"), default="compact")
    t.add_argument("--variants", type=int, default=1, help="failing variants kept per task and kind")
    r = sub.add_parser("rollouts", help="successful vs failed episodes of the same task from runs")
    r.add_argument("paths", nargs="+", help="trajectories.jsonl files or run directories")
    r.add_argument("--max-pairs-per-task", type=int, default=12)
    r.add_argument("--rejected-per-chosen", type=int, default=3)
    r.add_argument("--split", default=None, help="keep only tasks of this tau2 split")
    r.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("teleqna", help="TeleQnA: correct option vs each distractor")
    q.add_argument("path", help="TeleQnA JSON (e.g. ../shared/datasets/teleqna/sample.json)")
    q.add_argument("--part", choices=("all", "train", "test"), default="all",
                   help="only the questions of one part of a split by question (a hash of its id)")
    q.add_argument("--test-share", type=float, default=0.3, help="the share of questions in the test part")
    q.add_argument("--limit", type=int, default=None, help="only the first N usable questions (of the part)")
    for p in (t, r, q):
        p.add_argument("--out", required=True, help="pair JSONL to write")
    args = ap.parse_args(argv)

    report, t0 = Report(), time.perf_counter()
    try:
        if args.source == "tau2":
            from envs.tau2_telecom.tasks import (
                TaskFileError,
                load_split,
                load_task_file,
            )

            try:
                if args.split:
                    tasks = load_split(args.split)
                elif args.training_tasks_of:
                    tasks = _training_tasks(args.training_tasks_of)
                else:
                    loaded = load_task_file(args.tasks)
                    tasks = loaded.tasks
                    for problem in loaded.problems:
                        report.skip("task: unloadable", problem)
            except TaskFileError as e:
                raise ValueError(str(e)) from None
            tasks = tasks[: args.limit] if args.limit else tasks
            pairs = oracle_perturbation_pairs(tasks, mode=args.mode, kinds=args.kinds, seed=args.seed,
                                              policy=args.policy, prompt=args.prompt, variants=args.variants,
                                              report=report, progress=True)
            print(f"tasks: {len(tasks)}  groups: {len({p.group for p in pairs})}")
        elif args.source == "rollouts":
            ids = None
            if args.split:
                from envs.tau2_telecom.tasks import split_ids

                ids = split_ids(args.split)
            pairs = rollout_pairs(args.paths, args.max_pairs_per_task, args.rejected_per_chosen, args.seed, ids, report)
        else:
            pairs = teleqna_pairs(args.path, report, args.part, args.test_share, args.limit)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_pairs(args.out, pairs)
    print("\n".join(report.lines()))
    print(f"wrote {len(pairs)} pairs to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0 if pairs else 1
