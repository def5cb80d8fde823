"""Readiness checks at start-up: what would otherwise fail at the first rollout or reward (or hang a scheduler)
fails before any actor starts, with one line that names the config key and the value.

    preflight(cfg, train_tasks)    # files, endpoints, tasks: before Ray starts
    check_gpus(cfg, cluster_gpus)  # once the cluster is known
"""
from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

from envs.tau2_telecom.endpoint import LLMEndpoint
from rl.config import Config


class NotReady(RuntimeError):
    """A setting that cannot work: the message names the key."""


def check_model_folder(key: str, path: str) -> None:
    """A trained model folder (RM, judge weights): exists, has config.json and weights."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise NotReady(f"{key}={path!r}: no such folder")
    if not (folder / "config.json").is_file():
        raise NotReady(f"{key}={path!r}: not a model folder (no config.json)")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise NotReady(f"{key}={path!r}: the folder holds no weights (*.safetensors or *.bin)")


def check_endpoint(key: str, endpoint: LLMEndpoint, timeout_s: float = 3.0) -> None:
    """An OpenAI-compatible endpoint with a base_url accepts TCP connections. (Without a base_url litellm goes to
    the provider's own service; that is not probed, so a run can start without network access to it.)"""
    if not endpoint.configured or not endpoint.base_url:
        return
    url = urlparse(endpoint.base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise NotReady(f"{key}.base_url={endpoint.base_url!r}: not an http(s) URL")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        raise NotReady(f"{key}.base_url={endpoint.base_url!r}: unreachable ({e.strerror or e})") from None


def preflight(cfg: Config, train_tasks: dict) -> None:
    """Everything that can be checked before the cluster starts."""
    where = f"env.tasks_file={cfg.env.tasks_file!r}" if cfg.env.tasks_file else f"env.split={cfg.env.split!r}"
    if not train_tasks:
        limits = f" with env.mode={cfg.env.mode!r}" + (f", env.max_faults={cfg.env.max_faults}"
                                                       if cfg.env.max_faults is not None else "")
        raise NotReady(f"{where}: no training task{limits}")
    if cfg.reward.rm_path:
        check_model_folder("reward.rm_path", cfg.reward.rm_path)
    if cfg.env.mode == "dual" and cfg.env.user == "llm":
        check_endpoint("user_llm", cfg.user_llm)
    check_endpoint("judge", cfg.judge)


def check_gpus(cfg: Config, cluster_gpus: float) -> None:
    """On a GPU cluster every rollout worker and learner rank takes one GPU; more than there are would leave the
    placement waiting forever."""
    need = cfg.rollout.num_workers + cfg.learner.num_ranks
    if 0 < cluster_gpus < need:
        raise NotReady(f"rollout.num_workers={cfg.rollout.num_workers} + learner.num_ranks={cfg.learner.num_ranks} "
                       f"need {need} GPUs; the cluster has {cluster_gpus:g}")
