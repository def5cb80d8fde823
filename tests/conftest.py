import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TAU2_SHARED = SHARED / "tau2-telecom"


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# `make test` runs files on two pytest-xdist workers in collection order (Makefile: TEST_WORKERS). A multi-minute file
# handed out last keeps one worker busy after the other has finished, so these go first, longest first (1.5-6 min
# each on a 2-core machine with both workers busy), then the other files with `slow` tests, then the rest.
LONGEST_FILES = ("test_train_e2e.py", "test_rm_e2e.py", "test_sweep.py", "test_learner.py", "test_driver_kill.py",
                 "test_rollout_worker.py")


def _rank(item) -> int:
    if item.path.name in LONGEST_FILES:
        return LONGEST_FILES.index(item.path.name)
    return len(LONGEST_FILES) + (0 if item.get_closest_marker("slow") else 1)


def pytest_collection_modifyitems(items):
    file_rank: dict = {}  # a file ranks by its most urgent test, so it moves whole
    for item in items:
        file_rank[item.path] = min(file_rank.get(item.path, _rank(item)), _rank(item))
    items.sort(key=lambda item: file_rank[item.path])  # stable: a file's own tests keep their order


def missing(reason: str, module: bool = False) -> None:
    """Skip a test whose input (../shared data, an optional package) is absent - except in CI (CI=true), where all
    of it is installed, so a skip could only hide a broken setup: there it fails."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing input fails instead of skipping)", pytrace=False)
    pytest.skip(reason, allow_module_level=module)


def shared_file(name: str) -> Path:
    """A file from ../shared/tau2-telecom (read there; never copied into the repo)."""
    path = TAU2_SHARED / name
    if not path.exists():
        missing(f"{path} not available")
    return path


@pytest.fixture(scope="session")
def world():
    from envs.tau2_telecom.world import get_world

    return get_world()


@pytest.fixture(scope="session")
def tasks_by_id():
    from envs.tau2_telecom.tasks import load_split

    return {t.id: t for t in load_split("base") + load_split("small")}

@pytest.fixture(scope="session")
def untrained_rm(tmp_path_factory):
    """A tiny reward-model folder straight from the base model (random head): enough to test the plumbing."""
    from transformers import AutoTokenizer

    from rl.models import resolve_model
    from rl.rm.model import RM_META, load_sequence_classifier, write_meta

    base = str(resolve_model("tiny"))
    out = tmp_path_factory.mktemp("rm")
    load_sequence_classifier(base).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    (out / RM_META).write_text(write_meta(256, [0.0, 1.0, 2.0], "tiny"))
    return str(out)


REPO_ROOT = str(Path(__file__).resolve().parents[1])


def cleanup_vllm_shm(min_age_s: float = 60.0) -> None:
    """vLLM engines torn down abruptly leave /dev/shm segments and named semaphores behind (see ../shared/notes);
    remove ours that no live process maps. A mapping is matched by inode, not by name: glibc maps a semaphore under
    its temporary name (`sem.XXXXXX (deleted)`), so matching names deleted the live semaphores of the other xdist
    worker's processes, which a child spawned later then could not open. Candidates are listed before the maps are
    read and ones written in the last min_age_s are kept, so nothing created (not yet mapped) meanwhile is removed."""
    import glob
    import os as _os
    import time as _time

    candidates = []
    for path in glob.glob("/dev/shm/psm_*") + glob.glob("/dev/shm/sem.mp-*") + glob.glob("/dev/shm/sem.loky-*"):
        try:
            st = _os.stat(path)
        except OSError:
            continue
        if st.st_uid == _os.getuid() and _time.time() - st.st_mtime >= min_age_s:
            candidates.append((path, f"{_os.major(st.st_dev):02x}:{_os.minor(st.st_dev):02x}", st.st_ino))
    if not candidates:
        return
    mapped = set()  # (device as /proc/PID/maps prints it, inode)
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as fh:
                for line in fh:
                    if "/dev/shm/" in line:
                        fields = line.split(None, 5)
                        mapped.add((fields[3], int(fields[4])))
        except (OSError, ValueError, IndexError):
            pass
    for path, device, inode in candidates:
        if (device, inode) not in mapped:
            try:
                _os.unlink(path)
            except OSError:
                pass
