"""The driver: wires the actors and runs RL steps.

    python -m rl.train --config configs/laptop.yaml [key=value ...] [--resume]

One step, top to bottom (each line is one call into an actor):
  1. rollout   RolloutWorker.rollout    vLLM agent loop; each turn goes to an EnvWorker (tau2 session)
  2. reward    RewardActor.score        tau2's verdict + partial credit + format penalty
  3. advantage rl.algorithms            GRPO / RLOO / REINFORCE++ on the driver (cheap, pure torch)
  4. train     LearnerGroup.train_step  DeepSpeed ZeRO-3 PPO-clip step on N ranks
  5. sync      LearnerGroup.state_dict_ref -> RolloutWorker.sync_weights (Ray object store)
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from tqdm import tqdm

from rl import algorithms
from rl.config import Config, parse_cli
from rl.run_dir import RunDir


@dataclass
class TaskCursor:
    """Deterministic walk over the training tasks: shuffled per epoch, resumable from (epoch, index)."""

    ids: list[str]
    seed: int
    epoch: int = 0
    index: int = 0

    def _order(self) -> list[str]:
        order = list(self.ids)
        random.Random(self.seed * 100003 + self.epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[str]:
        out = []
        while len(out) < n:
            order = self._order()
            out.append(order[self.index])
            self.index += 1
            if self.index == len(order):
                self.epoch, self.index = self.epoch + 1, 0
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}


def load_tasks(cfg: Config, split: str | None = None) -> dict[str, dict]:
    from envs.tau2_telecom.tasks import load_split, load_task_file

    if cfg.env.tasks_file and split is None:
        loaded = load_task_file(cfg.env.tasks_file)
        for problem in loaded.problems:
            print(f"warning: skipped {problem}", file=sys.stderr)
        tasks = loaded.tasks
    else:
        tasks = load_split(split or cfg.env.split)
    if cfg.env.mode == "solo":
        tasks = [t for t in tasks if t.ticket]
    return {t.id: t.model_dump(mode="json") for t in tasks}


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False):
        from actors.env_worker import EnvPool, EnvSettings
        from actors.learner import LearnerGroup, LearnerSettings
        from actors.reward_actor import RewardActor
        from actors.rollout_worker import RolloutSettings, RolloutWorker
        from rl.models import resolve_model

        self.cfg = cfg
        self.run = RunDir(cfg, resume=resume)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model_path = str(resolve_model(cfg.model.name))
        self.tasks = load_tasks(cfg)
        self.cursor = TaskCursor(sorted(self.tasks), cfg.seed)
        self._init_ray(torch.cuda.is_available())
        use_gpu = cluster_has_gpus()

        env_settings = EnvSettings.from_config(cfg)
        self.env = EnvPool(env_settings, num_workers=cfg.env_pool.num_workers, max_restarts=cfg.env_pool.max_restarts)
        rs = RolloutSettings(model_path=self.model_path, mode=cfg.env.mode, max_model_len=cfg.rollout.max_model_len,
                             max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                             top_p=cfg.rollout.top_p, kv_cache_gib=cfg.rollout.kv_cache_gib,
                             gpu_memory_utilization=cfg.rollout.gpu_memory_utilization, seed=cfg.seed)
        res = {"num_gpus": 1} if use_gpu else {"num_cpus": cfg.rollout.num_cpus}
        runtime_env = {"env_vars": {"PYTHONPATH": _repo_root()}}
        self.rollout = [RolloutWorker.options(**res, runtime_env=runtime_env).remote(
            rs, self.env.workers, env_settings, f"r{i}") for i in range(cfg.rollout.num_workers)]
        ls = LearnerSettings(model_path=self.model_path, lr=cfg.learner.lr, weight_decay=cfg.learner.weight_decay,
                             grad_clip=cfg.learner.grad_clip, micro_batch_size=cfg.learner.micro_batch_size,
                             gradient_checkpointing=cfg.learner.gradient_checkpointing, offload=cfg.learner.offload,
                             kl_coef=cfg.algorithm.kl_coef, kl_kind=cfg.algorithm.kl_kind,
                             clip_eps=cfg.algorithm.clip_eps, clip_eps_high=cfg.algorithm.clip_eps_high,
                             aggregation=cfg.algorithm.aggregation, seed=cfg.seed)
        self.learner = LearnerGroup(ls, num_ranks=cfg.learner.num_ranks, use_gpu=use_gpu)
        self.reward = RewardActor.remote(cfg.reward, cfg.judge)
        ray.get([w.start.remote() for w in self.rollout])
        self.step = 0
        if resume:
            self._resume()

    def _init_ray(self, use_gpu: bool) -> None:
        # Logical CPUs: one per learner rank and rollout engine. On a 2-core laptop this oversubscribes on
        # purpose - the phases mostly take turns (rollout, then train) - rather than failing to schedule.
        need = 0 if use_gpu else self.cfg.learner.num_ranks + self.cfg.rollout.num_workers * self.cfg.rollout.num_cpus
        init_ray(self.cfg, need)

    # ------------------------------------------------------------------ step
    def rollout_batch(self, task_ids: list[str], group_size: int, greedy: bool = False) -> list[dict]:
        jobs = [{"task": self.tasks_by_id(tid), "group": g} for g, tid in enumerate(task_ids) for _ in range(group_size)]
        shards = [jobs[i:: len(self.rollout)] for i in range(len(self.rollout))]
        outs = ray.get([w.rollout.remote(shard, greedy) for w, shard in zip(self.rollout, shards) if shard])
        return [t for out in outs for t in out]

    def tasks_by_id(self, tid: str) -> dict:
        return self.tasks[tid] if tid in self.tasks else self.eval_tasks[tid]

    def train_step(self) -> dict:
        cfg, timings = self.cfg, {}
        t0 = time.perf_counter()
        trajs = self.rollout_batch(self.cursor.take(cfg.train.tasks_per_step), cfg.algorithm.group_size)
        rollout_wall = time.perf_counter() - t0
        # Episodes run concurrently, each alternating generation and env calls; split the rollout's wall time
        # by the average share of an episode's own time spent waiting on its environment.
        env_share = sum(t["timings"]["env_s"] / max(1e-9, t["timings"]["env_s"] + t["timings"]["generate_s"])
                        for t in trajs) / max(1, len(trajs))
        timings["time/env"] = rollout_wall * env_share
        timings["time/generate"] = rollout_wall - timings["time/env"]

        for t in trajs:  # the judge needs the task's natural-language assertions (tau2 tasks may carry some)
            criteria = self.tasks_by_id(t["task_id"]).get("evaluation_criteria") or {}
            t["nl_assertions"] = criteria.get("nl_assertions") or []
        t0 = time.perf_counter()
        scores = ray.get(self.reward.score.remote(trajs))
        timings["time/reward"] = time.perf_counter() - t0

        rewards = torch.tensor([s["reward"] for s in scores], dtype=torch.float32)
        groups = torch.tensor([t["group"] for t in trajs])
        mask = _pad([t["loss_mask"] for t in trajs], 0, torch.float32)
        adv = algorithms.compute_advantages(cfg.algorithm.name, rewards, groups, mask)
        keep = (algorithms.drop_zero_variance_groups(rewards, groups) if cfg.algorithm.drop_zero_variance_groups
                else torch.ones(len(trajs), dtype=torch.bool))
        kept = [i for i in range(len(trajs)) if keep[i] and sum(trajs[i]["loss_mask"]) > 0]
        if cfg.algorithm.kl_coef == 0:  # an all-zero advantage gives a zero gradient: don't pay for the step
            kept = [i for i in kept if bool(adv[i].abs().sum() > 0)]

        t0 = time.perf_counter()
        learner_metrics: dict = {}
        if kept:
            batch = {"input_ids": [trajs[i]["token_ids"] for i in kept],
                     "loss_mask": [trajs[i]["loss_mask"] for i in kept],
                     "old_logprobs": [trajs[i]["logprobs"] for i in kept],
                     "advantages": [adv[i, : len(trajs[i]["token_ids"])].tolist() for i in kept]}
            if cfg.algorithm.recompute_old_logprobs:
                batch["old_logprobs"] = self.learner.logprobs(batch)
            learner_metrics = self.learner.train_step(batch)
        timings["time/train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        sync = self.sync_weights() if kept else {}
        timings["time/sync"] = time.perf_counter() - t0

        self.step += 1
        metrics = {**_episode_metrics(trajs, scores), **timings,
                   **{f"learner/{k}": v for k, v in learner_metrics.items()},
                   "train/sequences": len(kept), "sync/bytes": sync.get("bytes", 0)}
        metrics["time/step"] = sum(timings.values())
        self.run.log_metrics(self.step, metrics)
        self.run.log_trajectories(self.step, trajs, scores)
        if self.step % cfg.train.checkpoint_every == 0 or self.step == cfg.train.steps:
            self.save_checkpoint()
        return metrics

    def sync_weights(self) -> dict:
        ref = self.learner.state_dict_ref()
        return ray.get([w.sync_weights.remote(ref) for w in self.rollout])[0]

    # ----------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        state = {"step": self.step, "cursor": self.cursor.state(), "python_rng": random.getstate(),
                 "torch_rng": torch.get_rng_state().tolist()}
        self.learner.save_checkpoint(str(self.run.checkpoint_dir(self.step)), state)
        self.run.mark_latest(self.step, self.cfg.train.keep_checkpoints)

    def _resume(self) -> None:
        found = self.run.latest_checkpoint()
        if found is None:
            print(f"--resume: no checkpoint in {self.run.path}/checkpoints; starting from step 0", file=sys.stderr)
            return
        step, path = found
        state = self.learner.load_checkpoint(str(path))
        self.step = state["step"]
        self.cursor.epoch, self.cursor.index = state["cursor"]["epoch"], state["cursor"]["index"]
        random.setstate(_as_rng_state(state["python_rng"]))
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        self.sync_weights()  # the engines start from the base model; give them the checkpoint's weights
        print(f"resumed from {path} (step {step})", file=sys.stderr)

    # ------------------------------------------------------------- evaluate
    def evaluate(self, split: str, n: int) -> float:
        """Success rate on held-out tasks, one greedy episode each."""
        self.eval_tasks = load_tasks(self.cfg, split)
        ids = sorted(self.eval_tasks)[:n]
        trajs = self.rollout_batch(ids, 1, greedy=True)
        return sum(t["eval"]["success"] for t in trajs) / max(1, len(trajs))

    def close(self) -> None:
        from rl.report import write_report

        metrics = self.run.metrics()
        if metrics:
            write_report(metrics, self.run.path / "report.png")
        self.run.close()
        for w in self.rollout:
            try:
                ray.get(w.shutdown.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self.learner.shutdown()
        self.env.shutdown()


def cluster_has_gpus() -> bool:
    """Whether the actors get GPUs. A `ray job submit` driver runs on the CPU head node, so this is a property of
    the cluster, not of the driver's process."""
    return ray.cluster_resources().get("GPU", 0) > 0


def init_ray(cfg: Config, need_cpus: int = 0) -> None:
    """Connect to cfg.ray.address (a cluster; inside `ray job submit` RAY_ADDRESS says where) or start a local
    Ray with at least need_cpus logical CPUs. Actors import this repo's packages, hence the PYTHONPATH."""
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": {"PYTHONPATH": _repo_root()}}
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, runtime_env=runtime_env)
        return
    ray.init(num_cpus=max(cfg.ray.num_cpus or os.cpu_count() or 1, need_cpus), include_dashboard=False,
             log_to_driver=True, runtime_env=runtime_env)


def _episode_metrics(trajs: list[dict], scores: list[dict]) -> dict:
    n = max(1, len(trajs))
    out = {"reward/mean": sum(s["reward"] for s in scores) / n,
           "success_rate": sum(t["eval"]["success"] for t in trajs) / n,
           "episodes": len(trajs),
           "episode/turns": sum(t["turns"] for t in trajs) / n,
           "episode/tokens": sum(len(t["token_ids"]) for t in trajs) / n,
           "episode/generated_tokens": sum(sum(t["loss_mask"]) for t in trajs) / n,
           "episode/truncated": sum(t["truncated"] for t in trajs) / n}
    # A component absent from some episodes (e.g. judge: only tasks with NL assertions) averages over the others.
    for key in sorted({k for s in scores for k in s["components"]}):
        values = [s["components"][key] for s in scores if s["components"].get(key) is not None]
        out[f"reward/{key}"] = sum(values) / len(values)
    return out


def _pad(rows: list[list], value, dtype) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=dtype)


def _as_rng_state(obj):
    return (obj[0], tuple(obj[1]), obj[2])


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[1])


def main(argv: list[str] | None = None) -> int:
    def flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--resume", action="store_true", help="continue the run in run_dir from its last checkpoint")

    cfg, args = parse_cli(argv, description=__doc__, add_arguments=flags)
    trainer = Trainer(cfg, resume=args.resume)
    try:
        before = trainer.evaluate(cfg.train.eval_split, cfg.train.eval_tasks) if cfg.train.eval_tasks else None
        bar = tqdm(range(trainer.step, cfg.train.steps), initial=trainer.step, total=cfg.train.steps,
                   desc="train", unit="step", file=sys.stderr)
        for _ in bar:
            m = trainer.train_step()
            bar.set_postfix(reward=f"{m['reward/mean']:.2f}", success=f"{m['success_rate']:.2f}",
                            step_s=f"{m['time/step']:.0f}")
        if cfg.train.eval_tasks:
            after = trainer.evaluate(cfg.train.eval_split, cfg.train.eval_tasks)
            print(f"held-out success ({cfg.train.eval_split}, {cfg.train.eval_tasks} tasks): "
                  f"before {before:.2f} -> after {after:.2f}")
    finally:
        trainer.close()
    print(f"run directory: {trainer.run.path}  (report: {trainer.run.path / 'report.png'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
