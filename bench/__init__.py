"""make bench: benchmarks whose arms run side by side in one process, so machine noise hits them alike."""
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def finish(report: dict, out: str, show: Callable[[dict], None]) -> dict:
    """Print a benchmark's report with `show` and write it as JSON to `out`."""
    show(report)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {out}")
    return report


def run_program(who: str, args: list[str], log: Path) -> None:
    """One pipeline step as a subprocess (its own Ray cluster), output appended to `log`; a failure stops here.
    The console gets a line per step: the program, its log, how long it took."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"{who}: {args[1]} (log: {log}) ...", end="", flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"=== {' '.join(args)}\n")
        fh.flush()
        done = subprocess.run([sys.executable, *args], stdout=fh, stderr=subprocess.STDOUT)
    print(f" {time.perf_counter() - t0:.0f} s", flush=True)
    if done.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"{who}: `{' '.join(args)}` failed (exit {done.returncode}); {log}:\n{tail}")
