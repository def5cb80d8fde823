"""Readiness checks: a setting that cannot work fails at start-up with one line naming the key."""
import subprocess
import sys

import pytest

from envs.tau2_telecom.endpoint import LLMEndpoint
from rl.config import load_config
from rl.preflight import NotReady, check_endpoint, check_gpus, check_model_folder, preflight
from tests.conftest import REPO_ROOT
from tests.openai_stub import ScriptedOpenAI


def test_model_folder_must_hold_a_model(tmp_path):
    with pytest.raises(NotReady, match=r"reward.rm_path='.*/nope': no such folder"):
        check_model_folder("reward.rm_path", str(tmp_path / "nope"))
    with pytest.raises(NotReady, match="no config.json"):
        check_model_folder("reward.rm_path", str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NotReady, match="no weights"):
        check_model_folder("reward.rm_path", str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")
    check_model_folder("reward.rm_path", str(tmp_path))


def test_endpoints_are_probed_only_when_they_name_a_server():
    down = LLMEndpoint(model="openai/judge", base_url="http://127.0.0.1:9/v1")  # discard port: refused
    with pytest.raises(NotReady, match=r"^judge.base_url='http://127.0.0.1:9/v1': unreachable"):
        check_endpoint("judge", down)
    with pytest.raises(NotReady, match="not an http"):
        check_endpoint("user_llm", LLMEndpoint(model="openai/u", base_url="127.0.0.1:8000"))
    check_endpoint("judge", LLMEndpoint(model="", base_url="http://127.0.0.1:9/v1"))  # not configured: not used
    check_endpoint("judge", LLMEndpoint(model="openai/gpt-4.1"))  # the provider's own service: not probed
    with ScriptedOpenAI([{"content": "ok"}]) as server:
        check_endpoint("judge", LLMEndpoint(model="openai/stub", base_url=server.base_url))


def test_tasks_customer_endpoint_and_gpus():
    cfg = load_config(None, ["env.split=small", "env.max_faults=1"])
    with pytest.raises(NotReady, match=r"env.split='small': no training task with env.mode='solo', env.max_faults=1"):
        preflight(cfg, {})
    dual = load_config(None, ["env.mode=dual", "env.user=llm", "user_llm.model=openai/u",
                              "user_llm.base_url=http://127.0.0.1:9/v1"])
    with pytest.raises(NotReady, match="user_llm.base_url"):
        preflight(dual, {"t": {}})
    gpus = load_config(None, ["rollout.num_workers=2", "learner.num_ranks=2"])
    with pytest.raises(NotReady, match="need 4 GPUs; the cluster has 2"):
        check_gpus(gpus, 2)
    check_gpus(gpus, 0)  # a CPU cluster: nothing is placed on GPUs
    check_gpus(gpus, 8)


def test_rl_train_stops_before_starting_anything(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "rl.train", "--config", "configs/test_tiny.yaml",
                           f"run_dir={run_dir}", f"reward.rm_path={tmp_path / 'missing_rm'}", "reward.rm_weight=0.5"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    missing = tmp_path / "missing_rm"
    assert done.stderr.strip().splitlines()[-1] == f"rl.train: reward.rm_path='{missing}': no such folder"
    assert not run_dir.exists()  # no run directory to --resume by mistake, no cluster started
