"""A language-model agent for `rl.evaluate --model`: the same actors rl.train evaluates with (rollout.num_workers vLLM
RolloutWorkers running the token-in/token-out agent loop, EnvWorkers holding the tau2 sessions) on a local or
connected Ray cluster.

    with ModelAgent(cfg, model_path) as agent:
        for outcome in agent.play([(task_dict, trial), ...], greedy=True, concurrency=16):
            ...

What the policy sees (prompt, chat template, token limits, customer) comes from the config, so a checkpoint is
evaluated with the settings it was trained with (`rl.evaluate` reads the run's config.yaml, or the telerl.yaml that
rl.train and rl.sft write beside a model's weights).
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from rl.actor_calls import ActorFailed, wait
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
        self.env, self.workers, self._starting = None, [], []

    def __enter__(self) -> ModelAgent:
        self.launch()
        self.wait_started()
        return self

    def launch(self) -> None:
        """Start the env actors and the engines without waiting for the engines to be ready (rl.rft trains while
        they start); wait_started() waits."""
        from actors.env_worker import EnvPool, EnvSettings
        from actors.rollout_worker import RolloutSettings, RolloutWorker
        from rl.runtime import actor_runtime_env, cluster_has_gpus, init_ray

        cfg = self.cfg
        init_ray(cfg, cfg.rollout.num_workers * cfg.rollout.num_cpus, log_to_driver=False)
        env_settings = EnvSettings.from_config(cfg)
        self.env = EnvPool(env_settings, num_workers=cfg.env_pool.num_workers, max_restarts=cfg.env_pool.max_restarts)
        res = {"num_gpus": 1} if cluster_has_gpus() else {"num_cpus": cfg.rollout.num_cpus}
        self.workers = [RolloutWorker.options(**res, runtime_env=actor_runtime_env()).remote(
            replace(RolloutSettings.from_config(cfg, self.model_path, worker=i), tau2_messages=True),
            self.env.workers, env_settings, f"eval{i}") for i in range(cfg.rollout.num_workers)]
        self._starting = [w.start.remote() for w in self.workers]

    def wait_started(self) -> None:
        wait(self._starting, self.cfg.rollout.timeout_s, "the rollout workers (engine start)", "rollout.timeout_s")

    def load_weights(self, weights, version: int) -> None:
        """Every engine reloads `weights` (an ObjectRef of a state dict: LearnerGroup.state_dict_ref) in place."""
        wait([w.sync_weights.remote(weights, version) for w in self.workers], self.cfg.rollout.timeout_s,
             "the rollout workers (weight sync)", "rollout.timeout_s")

    def sequence_logprobs(self, token_ids: list[int]) -> list[list[float]]:
        """Each engine's per-token logprobs of one sequence (position 0 is 0), to compare with the learner's."""
        return wait([w.sequence_logprobs.remote(token_ids) for w in self.workers], self.cfg.rollout.timeout_s,
                    "the rollout workers (sequence_logprobs)", "rollout.timeout_s")

    def play(self, jobs: list[tuple[dict, int]], greedy: bool, concurrency: int) -> Iterator[EpisodeOutcome]:
        """One episode per (task dict, trial), yielded as each finishes: `concurrency` in flight at a time, each
        sent to the engine with the fewest, and a finished episode's place goes to the next at once (waiting for a
        whole batch would leave the engines idle behind its longest episode)."""
        import ray

        todo = iter(enumerate(jobs))
        in_flight: dict = {}  # ObjectRef -> (trial, engine index)
        load = [0] * len(self.workers)

        def send() -> None:
            job = next(todo, None)
            if job is not None:
                g, (task, trial) = job
                i = load.index(min(load))
                in_flight[self.workers[i].rollout.remote([EpisodeJob(task, g)], greedy)] = (trial, i)
                load[i] += 1

        for _ in range(concurrency):
            send()
        timeout = self.cfg.rollout.timeout_s
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=timeout)
            if not ready:
                raise ActorFailed(f"the rollout workers finished no episode within rollout.timeout_s = {timeout:g} s")
            trial, i = in_flight.pop(ready[0])
            load[i] -= 1
            try:
                (traj,) = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:
                raise ActorFailed(f"rollout worker eval{i} died ({type(e).__name__})") from None
            send()
            yield outcome(traj, trial)

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the engines and the env actors."""
        import ray

        try:
            ray.get([w.shutdown.remote() for w in self.workers], timeout=60)
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            print(f"engine shutdown: {e}", file=sys.stderr)
        if self.env is not None:
            self.env.shutdown()
