import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TAU2_SHARED = SHARED / "tau2-telecom"


def shared_file(name: str) -> Path:
    """A file from ../shared/tau2-telecom (read there; never copied into the repo)."""
    path = TAU2_SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(scope="session")
def world():
    from envs.tau2_telecom.world import get_world

    return get_world()


@pytest.fixture(scope="session")
def tasks_by_id():
    from envs.tau2_telecom.tasks import load_split

    return {t.id: t for t in load_split("base") + load_split("small")}

REPO_ROOT = str(Path(__file__).resolve().parents[1])


def cleanup_vllm_shm() -> None:
    """vLLM engines torn down abruptly leave /dev/shm segments behind (see ../shared/notes); remove ours that no
    live process still maps (another engine - a concurrent test run - may be using the rest)."""
    import glob
    import os as _os

    in_use = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as fh:
                in_use.update(line.split(None, 5)[-1].strip() for line in fh if "/dev/shm/" in line)
        except OSError:
            pass
    for path in glob.glob("/dev/shm/psm_*") + glob.glob("/dev/shm/sem.mp-*") + glob.glob("/dev/shm/sem.loky-*"):
        try:
            if path not in in_use and _os.stat(path).st_uid == _os.getuid():
                _os.unlink(path)
        except OSError:
            pass
