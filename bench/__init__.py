"""make bench: benchmarks whose arms run side by side in one process, so machine noise hits them alike."""
import json
from collections.abc import Callable
from pathlib import Path


def finish(report: dict, out: str, show: Callable[[dict], None]) -> dict:
    """Print a benchmark's report with `show` and write it as JSON to `out`."""
    show(report)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {out}")
    return report
