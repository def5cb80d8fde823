"""rl.runtime: what every actor's process is started with."""
from rl.runtime import REPO_ROOT, actor_runtime_env


def test_actors_import_this_checkout_and_vllm_logs_warnings_only_unless_told(monkeypatch):
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    env = actor_runtime_env()["env_vars"]
    assert env["PYTHONPATH"] == str(REPO_ROOT) and env["VLLM_LOGGING_LEVEL"] == "WARNING"
    assert env["RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"] == "0"  # the rollout worker's env calls run in threads
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")  # a user debugging an engine gets what they asked for
    assert actor_runtime_env()["env_vars"]["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert actor_runtime_env(VLLM_LOGGING_LEVEL="ERROR")["env_vars"]["VLLM_LOGGING_LEVEL"] == "ERROR"
