"""Running a sweep: `run_sweep` (plan, run what is not finished, mark finished runs, write the results) and the
command line `python -m rl.tools.sweep`.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from tqdm import tqdm

import rl.tools.sweep as package
from rl.config import ConfigError, redact_overrides
from rl.tools.sweep.results import RunResult, collect, write_results
from rl.tools.sweep.runners import Attempt, JobRunner, Runner, SequentialRunner, repo_relative
from rl.tools.sweep.spec import DONE_FILE, Run, Sweep, finished, load_sweep, plan


def run_sweep(sweep: Sweep, runner: Runner, runs: list[Run] | None = None) -> list[RunResult]:
    """Run what is not finished yet, then aggregate every run of the sweep (finished earlier ones included)."""
    runs = plan(sweep) if runs is None else runs
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep.sweep_dir / "sweep.json").write_text(json.dumps(
        {"sweep_file": str(sweep.path), "base_config": str(sweep.base_config), "mode": sweep.mode,
         "arms": [{"name": a, "params": v} for a, v in {r.arm.name: r.arm.values for r in runs}.items()],
         "runs": [{"arm": r.arm.name, "seed": r.seed, "run_dir": str(r.run_dir),
                   "overrides": redact_overrides(r.overrides)}
                  for r in runs]}, indent=1) + "\n")
    # Seed-major: every arm's first seed before any arm's second, so an interrupted sweep already compares arms.
    todo = sorted((r for r in runs if not finished(r)), key=lambda r: sweep.seeds.index(r.seed))
    attempts: dict[int, Attempt] = {}
    if len(todo) < len(runs):
        print(f"skipping {len(runs) - len(todo)} finished run(s) (their run dirs hold {DONE_FILE})", file=sys.stderr)
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc=f"sweep {sweep.name}", unit="run",
               file=sys.stderr, dynamic_ncols=True)

    def on_done(run: Run, attempt: Attempt) -> None:
        attempts[id(run)] = attempt
        if attempt.returncode == 0:
            (run.run_dir / DONE_FILE).parent.mkdir(parents=True, exist_ok=True)
            (run.run_dir / DONE_FILE).write_text(json.dumps(
                {"arm": run.arm.name, "seed": run.seed, "params": run.arm.values,
                 "overrides": redact_overrides(run.overrides),
                 "wall_s": round(attempt.wall_s, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
            tqdm.write(f"{run.label}: finished in {attempt.wall_s:.0f} s", file=sys.stderr)
        else:
            tqdm.write(f"{run.label}: FAILED (exit {attempt.returncode}) after {attempt.wall_s:.0f} s; "
                       f"log: {run.log_path}", file=sys.stderr)
        bar.update(1)
        bar.set_postfix_str(run.label, refresh=True)

    try:
        runner.run(todo, on_done)
    finally:
        bar.close()
        results = collect(runs, attempts)
        write_results(sweep, results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl.tools.sweep", description=package.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, metavar="SWEEP_YAML", help="sweep file (see configs/sweeps/)")
    parser.add_argument("--address", default=None, metavar="URL",
                        help="Ray dashboard address, e.g. http://127.0.0.1:8265: every run becomes a Ray job there "
                             "(default: runs one after another on this machine)")
    parser.add_argument("--max-concurrent", type=int, default=1, metavar="N",
                        help="with --address: jobs running at the same time (default 1)")
    parser.add_argument("--poll-s", type=float, default=5.0, help="with --address: seconds between status polls")
    parser.add_argument("--dry-run", action="store_true", help="validate and print every run; run nothing")
    args = parser.parse_args(argv)
    if args.max_concurrent < 1:
        parser.error("--max-concurrent must be >= 1")
    try:
        sweep = load_sweep(args.config)
        if args.address:
            # The job's driver joins the cluster it runs on instead of starting a Ray of its own.
            sets_address = any(o.split("=", 1)[0].strip() == "ray.address" for o in sweep.overrides) or \
                "ray.address" in sweep.swept_keys
            sweep.sweep_dir = sweep.sweep_dir.resolve()  # the job's cwd is elsewhere
            runs = plan(sweep, [] if sets_address else ["ray.address=auto"], check_paths=False)
            repo_relative(sweep.base_config)
        else:
            runs = plan(sweep)
    except ConfigError as e:
        print(f"{parser.prog}: sweep error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in runs:
            state = "finished" if finished(run) else "to run"
            print(f"{run.label} [{state}]: python -m rl.train {shlex.join(run.train_args())}")
        print(f"{len(runs)} runs ({len({r.arm.name for r in runs})} arms x {len(sweep.seeds)} seeds)")
        return 0
    runner: Runner = (JobRunner(args.address, args.max_concurrent, args.poll_s) if args.address
                      else SequentialRunner())
    results = run_sweep(sweep, runner, runs)
    n = {s: sum(r.status == s for r in results) for s in ("finished", "failed", "not run")}
    skipped = sum(r.skipped for r in results)
    print(f"sweep {sweep.name}: {n['finished']} finished ({skipped} skipped as already done), {n['failed']} failed"
          + (f", {n['not run']} not run" if n["not run"] else ""))
    print(f"results: {sweep.sweep_dir / 'results.md'}\n         {sweep.sweep_dir / 'results.csv'}\n"
          f"         {sweep.sweep_dir / 'plots'}/")
    return 0 if n["finished"] == len(results) else 1
