"""A language-model agent for `rl.evaluate --model`: the same actors rl.train evaluates with (a vLLM RolloutWorker
running the token-in/token-out agent loop, EnvWorkers holding the tau2 sessions) on a local or connected Ray cluster.

    with ModelAgent(cfg, model_path) as agent:
        outcomes = agent.play([(task_dict, trial), ...], greedy=True)

What the policy sees (prompt, chat template, token limits, customer) comes from the config, so a checkpoint is
evaluated with the settings it was trained with (`rl.evaluate` reads the run's config.yaml, or the telerl.yaml that
rl.train and rl.sft write beside a model's weights).
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from rl.actor_calls import wait
from rl.config import Config
from rl.contracts import EpisodeJob, Trajectory
from rl.eval_report import EpisodeOutcome
from rl.models import MODEL_CONFIG_FILE


def model_config_file(model: str) -> Path | None:
    """The config a model was trained with: RUN_DIR/config.yaml, or MODEL_DIR/telerl.yaml; None if neither."""
    path = Path(model)
    for candidate in (path / "config.yaml", path / MODEL_CONFIG_FILE):
        if candidate.is_file():
            return candidate
    return None


def model_weights(model: str) -> str:
    """A run directory means its exported policy (RUN_DIR/model, written when the run ends); anything else is what
    `model.name` accepts (an HF folder, tiny, smollm2-135m)."""
    path = Path(model)
    if (path / "config.yaml").is_file() and (path / "meta.json").is_file():
        path = path / "model"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{model} is a run directory without an exported policy ({path}): the run has "
                                    f"not finished; `rl.train --resume` finishes it")
    if (path / "config.json").is_file() and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise FileNotFoundError(f"{path} has a config.json but no weights (*.safetensors or *.bin)")
    return str(path) if path.is_dir() else model


def load_policy(model: str, config: str | None = None, overrides: list[str] = ()) -> tuple[Config, str]:
    """(config, model folder) of a policy: its own config (or `config`) with `overrides`, and its weights as a local
    folder. Raises ConfigError, FileNotFoundError or ModelNotFoundError naming what is wrong."""
    from dataclasses import asdict

    from rl.config import load_config
    from rl.models import resolve_model

    path = config or model_config_file(model)
    if path is None and Path(model).is_dir():
        print(f"warning: {model} carries no config (telerl.yaml or config.yaml): the default config's prompt and "
              f"limits are used; pass --config with the one it was trained with", file=sys.stderr)
    cfg = load_config(str(path) if path else None, list(overrides))
    return cfg, str(resolve_model(model_weights(model), asdict(cfg.model.tiny)))


def outcome(traj: Trajectory, trial: int) -> EpisodeOutcome:
    e = traj.eval
    # rl.evaluate counts an episode the context limit cut off among its failures by cause (the rollout worker's note
    # says how long it was)
    failure = e.failure or ("context_overflow" if e.termination == "context_overflow" else None)
    return EpisodeOutcome(traj.task_id, trial, e.reward, e.success, e.termination, failure=failure, note=e.note,
                          turns=traj.turns, tool_calls=traj.tool_calls, tokens=traj.generated_tokens,
                          messages=traj.tau2_messages, chat_messages=traj.messages)


class ModelAgent:
    """Starts the actors on enter, stops them on exit."""

    def __init__(self, cfg: Config, model_path: str):
        self.cfg, self.model_path = cfg, model_path
        self.env = self.worker = None

    def __enter__(self) -> ModelAgent:
        from actors.env_worker import EnvPool, EnvSettings
        from actors.rollout_worker import RolloutSettings, RolloutWorker
        from rl.runtime import actor_runtime_env, cluster_has_gpus, init_ray

        cfg = self.cfg
        init_ray(cfg, cfg.rollout.num_cpus, log_to_driver=False)
        env_settings = EnvSettings.from_config(cfg)
        self.env = EnvPool(env_settings, num_workers=cfg.env_pool.num_workers, max_restarts=cfg.env_pool.max_restarts)
        res = {"num_gpus": 1} if cluster_has_gpus() else {"num_cpus": cfg.rollout.num_cpus}
        self.worker = RolloutWorker.options(**res, runtime_env=actor_runtime_env()).remote(
            replace(RolloutSettings.from_config(cfg, self.model_path), tau2_messages=True), self.env.workers,
            env_settings, "eval")
        wait(self.worker.start.remote(), cfg.rollout.timeout_s, "the rollout worker (engine start)",
             "rollout.timeout_s")
        return self

    def play(self, jobs: list[tuple[dict, int]], greedy: bool) -> list[EpisodeOutcome]:
        """One episode per (task dict, trial), run concurrently on the engine."""
        episodes = self.worker.rollout.remote([EpisodeJob(task, g) for g, (task, _) in enumerate(jobs)], greedy)
        trajs = wait(episodes, self.cfg.rollout.timeout_s, "the rollout worker", "rollout.timeout_s")
        return [outcome(t, jobs[t.group][1]) for t in trajs]

    def __exit__(self, *exc) -> None:
        import ray

        try:
            if self.worker is not None:
                ray.get(self.worker.shutdown.remote(), timeout=60)
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            print(f"rl.evaluate: engine shutdown: {e}", file=sys.stderr)
        if self.env is not None:
            self.env.shutdown()
