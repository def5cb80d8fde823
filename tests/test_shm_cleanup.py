"""The suite's /dev/shm sweep (tests/conftest.py) removes what dead engines left and nothing a live process needs."""
import multiprocessing
import os
import time
from pathlib import Path

from tests.conftest import cleanup_vllm_shm


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_keeps_live_semaphores_and_removes_orphans():
    # A spawn-context lock's name stays in /dev/shm for the children that will open it; this process maps it under
    # glibc's temporary name, so only the inode tells that it is in use.
    lock = multiprocessing.get_context("spawn").Lock()
    live = Path("/dev/shm/sem" + lock._semlock.name.replace("/", "."))
    tag = f"telerltest{os.getpid()}"
    orphan_sem, orphan_seg = Path(f"/dev/shm/sem.mp-{tag}"), Path(f"/dev/shm/psm_{tag}")
    young = Path(f"/dev/shm/psm_{tag}young")
    try:
        for path in (orphan_sem, orphan_seg, young):
            path.write_bytes(b"\0" * 32)
        for path in (live, orphan_sem, orphan_seg):
            _age(path, 600)
        cleanup_vllm_shm()
        assert live.exists() and young.exists()  # in use; just created (maybe not mapped yet)
        assert not orphan_sem.exists() and not orphan_seg.exists()
        # The lock still works across processes after the sweep: a spawned child opens it by name.
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=_hold, args=(lock,))
        child.start()
        child.join(60)
        assert child.exitcode == 0
    finally:
        for path in (orphan_sem, orphan_seg, young):
            path.unlink(missing_ok=True)


def _hold(lock) -> None:
    with lock:
        pass
