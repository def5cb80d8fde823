"""`kill -9` of the real driver (`python -m rl.train`) between two checkpoints, then `--resume`: the run finishes with
every step logged exactly once, as an uninterrupted run logs them (issue 12). The driver's own local Ray cluster is
orphaned by the kill and stopped by this test before the resume, as a user's `ray stop` would."""
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.conftest import REPO_ROOT, cleanup_vllm_shm
from tests.test_ray_job import _stop_cluster

pytestmark = pytest.mark.slow

STEPS = 4  # checkpoints after steps 2 and 4: the kill lands while step 4 runs, after step 3 was logged


def _steps(path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip().endswith("}")]


def _driver(run_dir, log, marker: str, *extra: str) -> subprocess.Popen:
    key, value = marker.split("=")
    cmd = [sys.executable, "-m", "rl.train", "--config", "configs/test_tiny.yaml", f"run_dir={run_dir}",
           f"train.steps={STEPS}", "train.checkpoint_every=2", *extra]
    # A session of its own: the driver and the Ray cluster it starts can be found (and stopped) afterwards.
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ, key: value}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_a_driver_killed_between_checkpoints_resumes_with_every_step_logged_once(tmp_path):
    run_dir, marker = tmp_path / "run", f"TELERL_TEST_DRIVER={secrets.token_hex(4)}"
    metrics = run_dir / "metrics.jsonl"
    with open(tmp_path / "first.log", "w") as log:
        driver = _driver(run_dir, log, marker)
        try:
            deadline = time.monotonic() + 900
            while 3 not in _steps(metrics):  # step 3 logged: checkpoint 2 complete, step 4 under way
                assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the driver did not reach step 3 in 900 s"
                time.sleep(0.2)
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(timeout=60)
        finally:
            left = _stop_cluster(driver.pid, marker.encode())
            cleanup_vllm_shm()
    assert not left, f"processes of the killed driver's cluster survived: {sorted(left)}"
    assert (run_dir / "checkpoints" / "latest").read_text() == "2" and _steps(metrics) == [1, 2, 3]

    with open(tmp_path / "resume.log", "w") as log:
        driver = _driver(run_dir, log, marker, "--resume")
        try:
            code = driver.wait(timeout=900)
        finally:
            _stop_cluster(driver.pid, marker.encode())
            cleanup_vllm_shm()
    out = (tmp_path / "resume.log").read_text()
    assert code == 0, out[-3000:]
    assert "resumed from" in out and "step_2 (step 2)" in out
    assert _steps(metrics) == list(range(1, STEPS + 1))  # step 3 is logged once, not twice
    episodes = Counter(json.loads(line)["step"] for line in (run_dir / "trajectories.jsonl").read_text().splitlines())
    assert episodes == {step: 2 * 2 for step in range(1, STEPS + 1)}  # tasks_per_step x group_size, once each
    assert (run_dir / "checkpoints" / "latest").read_text() == str(STEPS)
    starts = [json.loads(line) for line in (run_dir / "meta.json").read_text().splitlines()]
    assert [s["resumed"] for s in starts] == [False, True]
