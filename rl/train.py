"""The driver: wires the actors and runs RL steps.

    python -m rl.train --config configs/laptop.yaml [key=value ...] [--resume]
    python -m rl.train --config configs/learn_tiny.yaml model.name=DIR train.steps=0   # held-out evaluation only

One step, top to bottom (each line is one call into an actor):
  1. rollout   RolloutWorker.rollout    vLLM agent loop; each turn goes to an EnvWorker (tau2 session)
  2. reward    RewardActor.score        tau2's verdict + partial credit + format penalty (+ RM / judge, audited
                                        against the verdict on these episodes: rl.reward_audit)
  3. advantage build_train_batch        GRPO / RLOO / REINFORCE++ / RFT (rl.algorithms) on the driver, pure torch
  4. train     LearnerGroup.train_step  DeepSpeed ZeRO-3 PPO-clip step on N ranks (+ the demonstrations' NLL term
                                        when algorithm.demo_coef > 0: rl.demonstrations)
  5. sync      LearnerGroup.state_dict_ref -> RolloutWorker.sync_weights (Ray object store), or with
               sync.transport = collective LearnerGroup.broadcast_weights -> RolloutWorker.receive_weights
With train.async_steps = 1, step k+1's rollout (1) is launched before step k's train (4), with step k's rollout
weights, and the engines sync (5) once both are done: the learner never waits for generation that could overlap.
Held-out evaluation (train.eval_tasks > 0) runs before step 1, every train.eval_every steps and after the last step;
its eval/... metrics (rl.evaluation) go into that step's metrics row (step 0 for "before").
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import ray
import torch
from tqdm import tqdm

from actors.learner import PHASES, LearnerFailed
from rl import algorithms
from rl.actor_calls import ActorFailed, ActorSlot, call_with_replacement, wait
from rl.config import AlgorithmConfig, Config, parse_cli
from rl.contracts import EpisodeJob, Score, TrainBatch, Trajectory
from rl.cursor import ShuffledCursor
from rl.evaluation import heldout_metrics
from rl.preflight import NotReady, check_gpus, preflight
from rl.reward_audit import AuditMonitor, audit_step
from rl.run_dir import RunDir
from rl.runtime import actor_runtime_env, cluster_has_gpus, init_ray, split_tasks
from rl.tensors import pad_rows


class StepTimer:
    """Wall time per named phase of a step: `with timer("train"): ...` adds to timer.seconds["time/train"]."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = f"time/{phase}"
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0


@dataclass
class PendingRollout:
    """Episodes sent to the rollout workers and not collected yet (a step's, launched ahead with async_steps)."""

    shards: list[list[EpisodeJob]]  # per worker
    greedy: bool
    sent: dict[int, ray.ObjectRef]  # worker index -> its rollout call
    cursor: dict | None = None  # the task cursor before these tasks were taken: what a checkpoint saves
    trajs: list[Trajectory] | None = None  # once collected


def build_train_batch(trajs: list[Trajectory], scores: list[Score], algo: AlgorithmConfig) -> TrainBatch | None:
    """Advantages from the rewards (per algo.name, within each trajectory's group), then the sequences worth a
    gradient: DAPO's dynamic sampling drops groups whose rewards all tie (algo.drop_zero_variance_groups), an
    episode with no sampled token has nothing to train, and without a KL term an all-zero advantage gives a zero
    gradient. None when nothing is left: the step is skipped, not paid for."""
    rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32)
    groups = torch.tensor([t.group for t in trajs])
    mask = pad_rows([t.loss_mask for t in trajs], 0, torch.float32)
    if algo.name == "rft":  # rejection sampling keeps what tau2's verifier passes, whatever the reward mix adds
        rewards = torch.tensor([float(t.eval.success) for t in trajs])
    adv = algorithms.compute_advantages(algo.name, rewards, groups, mask)
    keep = (algorithms.drop_zero_variance_groups(rewards, groups) if algo.drop_zero_variance_groups
            else torch.ones(len(trajs), dtype=torch.bool))
    kept = [i for i, t in enumerate(trajs) if keep[i] and t.generated_tokens > 0
            and (algo.kl_coef > 0 or bool(adv[i].abs().sum() > 0))]
    if not kept:
        return None
    kept.sort(key=lambda i: trajs[i].group)  # a group's episodes side by side (stable: episode order within it)
    return TrainBatch(input_ids=[trajs[i].token_ids for i in kept], loss_mask=[trajs[i].loss_mask for i in kept],
                      old_logprobs=[trajs[i].logprobs for i in kept],
                      advantages=[adv[i, : len(trajs[i].token_ids)].tolist() for i in kept])


def minibatches(n: int, update_epochs: int, num_minibatches: int, rng: random.Random) -> list[list[int]]:
    """PPO's reuse of one rollout batch of n sequences: update_epochs passes, each a fresh shuffle cut into
    num_minibatches near-equal parts (fewer when n is smaller); one optimizer step per part. A part lists its
    sequences in batch order, so a group's episodes stay side by side (learner.shared_prefix shares their prompt)."""
    parts = min(num_minibatches, n)
    out = []
    for _ in range(update_epochs):
        order = list(range(n))
        rng.shuffle(order)
        out += [sorted(order[k * n // parts:(k + 1) * n // parts]) for k in range(parts)]
    return out


class StartupClock:
    """Where a run's start-up goes, from the process's launch: the process (interpreter and imports, for rl.train),
    setup (tasks, model, run directory), Ray, then the learner ranks and the engines, which start concurrently (each
    measured from when they were launched). Logged as startup/... with the process's first step; one line printed."""

    def __init__(self):
        import psutil

        self.launched = psutil.Process().create_time()
        self.last = self.parallel_from = time.time()
        self.seconds = {"process": self.last - self.launched}

    def lap(self, phase: str) -> None:
        """A phase that ran alone, from the end of the one before."""
        now = time.time()
        self.seconds[phase], self.last, self.parallel_from = now - self.last, now, now

    def mark(self, phase: str, at: float | None = None) -> None:
        """A phase started with the others after the last lap, ready at `at` (wall clock; default now)."""
        self.seconds[phase] = (at or time.time()) - self.parallel_from
        self.last = max(self.last, time.time())

    def metrics(self) -> dict[str, float]:
        return {**{f"startup/{k}_s": v for k, v in self.seconds.items()}, "startup/total_s": self.last - self.launched}

    def summary(self) -> str:
        s = self.seconds
        alone = f"process and imports {s['process']:.1f} s, setup {s['setup']:.1f} s, Ray {s['ray']:.1f} s"
        return (f"start-up: {self.last - self.launched:.1f} s since launch ({alone}; then together: learner ranks "
                f"{s['learner']:.1f} s, engines {s['engines']:.1f} s)")


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False):
        from actors.env_worker import EnvPool, EnvSettings
        from actors.reward_actor import RewardActor
        from actors.rollout_worker import RolloutSettings, RolloutWorker
        from rl.models import resolve_model

        # -- tasks, model and readiness checks (before anything is written or started), run directory, seeds
        clock = StartupClock()
        self.cfg = cfg
        try:
            tasks = split_tasks(cfg)
        except ValueError as e:  # no task left, an unknown train.task_ids entry: a setting that cannot work
            raise NotReady(str(e)) from None
        self.tasks, self.eval_tasks = tasks.train, tasks.heldout
        preflight(cfg, self.tasks)
        self.model_path = str(resolve_model(cfg.model.name, asdict(cfg.model.tiny)))
        self.demos = load_demonstrations(cfg, self.model_path) if cfg.algorithm.demo_coef > 0 else []
        self.run = RunDir(cfg, resume=resume)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        if tasks.left_out:
            print(f"training tasks: {len(self.tasks)} ({tasks.left_out} tasks of train.eval_split="
                  f"{cfg.train.eval_split!r} left out of env.split={cfg.env.split!r}: they are held out)",
                  file=sys.stderr)
        self.cursor = ShuffledCursor(sorted(self.tasks), cfg.seed)
        self.update_rng = random.Random(cfg.seed)  # mini-batch shuffles; its own stream so rollouts don't shift it
        self.demo_cursor = ShuffledCursor(list(range(len(self.demos))), cfg.seed + 1)
        self.audit_monitor = AuditMonitor(cfg.reward.audit_min_agreement, cfg.reward.audit_patience)
        clock.lap("setup")

        # -- cluster: learner.num_cpus per learner rank, rollout.num_cpus per engine. On a 2-core laptop this
        # oversubscribes on purpose - the phases mostly take turns (rollout, then train) - rather than failing to
        # schedule.
        on_gpu = torch.cuda.is_available()
        init_ray(cfg, 0 if on_gpu else cfg.learner.num_ranks * cfg.learner.num_cpus
                 + cfg.rollout.num_workers * cfg.rollout.num_cpus,
                 log_to_driver=True)
        use_gpu = cluster_has_gpus()
        check_gpus(cfg, ray.cluster_resources().get("GPU", 0))
        clock.lap("ray")

        # -- actors: environment, rollout workers (vLLM), reward, learner (ZeRO-3)
        env_settings = EnvSettings.from_config(cfg)
        self.env = EnvPool(env_settings, num_workers=cfg.env_pool.num_workers, max_restarts=cfg.env_pool.max_restarts)
        res = {"num_gpus": 1} if use_gpu else {"num_cpus": cfg.rollout.num_cpus}

        def rollout_worker(i: int):
            return RolloutWorker.options(**res, runtime_env=actor_runtime_env()).remote(
                RolloutSettings.from_config(cfg, self.model_path, worker=i), self.env.workers, env_settings, f"r{i}")

        def replacement_rollout_worker(i: int):  # started, with the learner's current weights (this step's version)
            worker = rollout_worker(i)
            self._wait(worker.start.remote(), f"rollout worker r{i} (engine start)")
            self._wait(worker.sync_weights.remote(self.learner.state_dict_ref(), self.learner_version),
                       f"rollout worker r{i}")
            return worker

        self.rollout_slots = [ActorSlot(rollout_worker(i), build=lambda i=i: replacement_rollout_worker(i))
                              for i in range(cfg.rollout.num_workers)]
        engines_started = [w.start.remote() for w in self.rollout_workers]  # concurrently with the learner's start
        self.reward_slot = ActorSlot(RewardActor.remote(cfg.reward, cfg.judge),
                                     build=lambda: RewardActor.remote(cfg.reward, cfg.judge))
        self.use_gpu, self.learner_restarts = use_gpu, 0
        self.learner = self._build_learner()
        clock.mark("learner")
        engines = self._wait(engines_started, "the rollout workers (engine start)")
        clock.mark("engines", at=max(e["ready_at"] for e in engines))
        self.startup = clock.metrics()  # logged with this process's first step
        print(clock.summary(), file=sys.stderr)
        self.step = 0
        self.learner_version = 0  # optimizer steps in the learner's weights (the engines get it with each sync)
        self.ahead: PendingRollout | None = None  # the next step's episodes, launched early (train.async_steps)
        self.weight_group = None  # (members, WeightGroup) once sync.transport = collective has formed it
        if resume:
            self._resume()

    # ------------------------------------------------------------------ step
    def train_step(self) -> dict | None:
        """One step: rollout -> reward -> advantages -> train -> sync, then logs and (maybe) a checkpoint. None when
        a learner rank failed: the run went back to its last checkpoint (recover_learner) and self.step with it."""
        cfg, timer = self.cfg, StepTimer()
        with timer("rollout"):
            if self.ahead is not None:
                trajs, self.ahead = self.collect(self.ahead), None
            else:
                trajs = self.rollout(self.cursor.take(cfg.train.tasks_per_step), cfg.algorithm.group_size)
        lag = check_staleness(trajs, self.learner_version, cfg.train.async_steps)
        if cfg.train.async_steps and self.step + 1 < cfg.train.steps:
            # One step off-policy: the next step's episodes are sampled by the weights these were (or newer ones)
            # while the learner trains on these.
            cursor = self.cursor.state()
            self.ahead = self.launch(self.cursor.take(cfg.train.tasks_per_step), cfg.algorithm.group_size,
                                     cursor=cursor)
        with timer("reward"):
            scores = self.score(trajs)
        audit = audit_step([t.group for t in trajs], [t.eval.success for t in trajs], [s.components for s in scores],
                           [t.termination for t in trajs])
        audit.update(self.audit_monitor.update(self.step + 1, audit))
        batch = build_train_batch(trajs, scores, cfg.algorithm)
        try:
            with timer("train"):
                learner_metrics = self.train(batch) if batch else {}
            if batch:
                self.learner_version = self.step + 1
            if self.ahead is not None:
                with timer("rollout"):  # the engines finish the next step's episodes before they take new weights
                    self.collect(self.ahead)
            with timer("sync"):
                sync = self.sync_weights() if batch else {}
        except LearnerFailed as e:
            self.recover_learner(e)
            return None

        self.step += 1
        metrics = {**self.startup, **episode_metrics(trajs, scores), **audit,
                   **_split_rollout_time(timer.seconds.pop("time/rollout"), trajs),
                   **timer.seconds, **{f"learner/{k}": v for k, v in learner_metrics.items()},
                   "train/sequences": len(batch) if batch else 0, "sync/bytes": sync.get("bytes", 0),
                   "rollout/policy_lag": lag,
                   "rollout/restarts": self.rollout_restarts, "reward/restarts": self.reward_restarts,
                   "learner/restarts": self.learner_restarts}
        metrics["time/step"] = sum(v for k, v in metrics.items() if k.startswith("time/"))
        self.startup = {}
        if self.eval_due():
            t0 = time.perf_counter()
            metrics.update(self.evaluate())
            metrics["time/eval"] = time.perf_counter() - t0  # not part of time/step: evaluation is not training
        self.run.log_metrics(self.step, metrics)
        self.run.log_trajectories(self.step, trajs, scores)
        check_failures(trajs, self.step, cfg.train.max_failed_episodes)  # after logging: the reasons are kept
        if self.step % cfg.train.checkpoint_every == 0 or self.step == cfg.train.steps:
            try:
                self.save_checkpoint()
            except LearnerFailed as e:
                self.recover_learner(e)
                return None
        return metrics

    def rollout(self, task_ids: list[str], group_size: int, greedy: bool = False) -> list[Trajectory]:
        """group_size episodes of each task, spread over the rollout workers; group g = task_ids[g]."""
        return self.collect(self.launch(task_ids, group_size, greedy))

    def launch(self, task_ids: list[str], group_size: int, greedy: bool = False,
               cursor: dict | None = None) -> PendingRollout:
        """Send the episodes to the rollout workers and return at once (collect() waits for them)."""
        jobs = [EpisodeJob(self._task(tid), g) for g, tid in enumerate(task_ids) for _ in range(group_size)]
        n = len(self.rollout_workers)
        shards = [jobs[i::n] for i in range(n)]
        sent = {i: w.rollout.remote(shards[i], greedy) for i, w in enumerate(self.rollout_workers) if shards[i]}
        return PendingRollout(shards, greedy, sent, cursor)

    def collect(self, pending: PendingRollout) -> list[Trajectory]:
        """The launched episodes (waited for once; kept on `pending` for a second call)."""
        if pending.trajs is None:
            outs = []
            for i, ref in pending.sent.items():  # a worker that died or hung is replaced and its shard re-run
                shard = pending.shards[i]
                outs.append(call_with_replacement(lambda w, shard=shard: w.rollout.remote(shard, pending.greedy),
                                                  self.rollout_slots[i], f"rollout worker r{i}",
                                                  self.cfg.rollout.timeout_s, "rollout.timeout_s", sent=ref))
            pending.trajs = [t for out in outs for t in out]
        return pending.trajs

    def score(self, trajs: list[Trajectory]) -> list[Score]:
        """The reward actor's scores; a dead or hung one is replaced and the batch scored again."""
        return call_with_replacement(lambda actor: actor.score.remote(trajs), self.reward_slot, "reward actor",
                                     self.cfg.reward.timeout_s, "reward.timeout_s")

    def _wait(self, refs, what: str):
        return wait(refs, self.cfg.rollout.timeout_s, what, "rollout.timeout_s")

    @property
    def rollout_workers(self) -> list:
        return [slot.actor for slot in self.rollout_slots]

    @property
    def rollout_restarts(self) -> int:
        return sum(slot.restarts for slot in self.rollout_slots)

    @property
    def reward(self):
        return self.reward_slot.actor

    @property
    def reward_restarts(self) -> int:
        return self.reward_slot.restarts

    def train(self, batch: TrainBatch) -> dict:
        """algorithm.update_epochs x num_minibatches optimizer steps on the step's batch; metrics averaged over
        them (approx_kl and clip_fraction grow over the later ones: they measure the drift from the sampler)."""
        algo = self.cfg.algorithm
        if algo.recompute_old_logprobs:  # the learner's own numerics as the PPO ratio's denominator
            if algo.tis_cap is not None:  # and the sampler's, for the truncated importance weight
                batch.behaviour_logprobs = batch.old_logprobs
            batch.old_logprobs = self.learner.logprobs(batch)
        parts = minibatches(len(batch), algo.update_epochs, algo.num_minibatches, self.update_rng)
        if algo.kl_coef > 0 and algo.update_epochs > 1:  # the reference forward once, not once per update
            batch.ref_logprobs = self.learner.logprobs(batch, reference=True)
        results = [self.learner.train_step(batch.select(part), self.demo_batch()) for part in parts]
        out = {k: sum(r[k] for r in results) / len(results) for k in results[0]}
        out.update({k: sum(r[k] for r in results) for k in ("tokens", "seconds", *PHASES)}, updates=len(results))
        return out

    def demo_batch(self) -> TrainBatch | None:
        """The next algorithm.demo_batch demonstrations for one optimizer step; None when the term is off."""
        if not self.demos:
            return None
        rows = [self.demos[i] for i in self.demo_cursor.take(self.cfg.algorithm.demo_batch)]
        return TrainBatch(input_ids=[ids for ids, _ in rows], loss_mask=[mask for _, mask in rows])

    def sync_weights(self) -> dict:
        if self.cfg.sync.transport == "collective":
            return self._broadcast_weights()
        ref = self.learner.state_dict_ref()
        return self._wait([w.sync_weights.remote(ref, self.step + 1) for w in self.rollout_workers],
                          "the rollout workers (weight sync)")[0]

    def _broadcast_weights(self) -> dict:
        """sync.transport = collective: learner rank 0 broadcasts to every engine worker over their own group,
        formed on first use and again whenever a member was replaced (a rollout worker, the learner)."""
        from actors.weight_transport import WeightGroup

        members = (self.learner_restarts, tuple(slot.restarts for slot in self.rollout_slots))  # who is in it
        if self.weight_group is None or self.weight_group[0] != members:
            host, port = self.learner.weight_group_address()
            group = WeightGroup(host, port, 1 + len(self.rollout_workers), "nccl" if self.use_gpu else "gloo",
                                self.cfg.rollout.timeout_s or 3600.0)
            # One vLLM worker per engine (rollout engines run without tensor parallelism): rank 1 + worker index.
            joins = [w.join_weight_group.remote(group, 1 + i) for i, w in enumerate(self.rollout_workers)]
            self.learner.wait([self.learner.join_weight_group(group)], "failed to join the weight group")
            self._wait(joins, "the rollout workers (joining the weight group)")
            self.weight_group = (members, group)
        received = [w.receive_weights.remote(self.step + 1) for w in self.rollout_workers]
        sent = self.learner.wait(self.learner.broadcast_weights(int(self.cfg.sync.bucket_mb * (1 << 20))),
                                 "failed in broadcast_weights")
        out = self._wait(received, "the rollout workers (weight sync)")[0]
        return {**out, "bytes": sent[0]}

    def _task(self, tid: str) -> dict:
        return self.tasks[tid] if tid in self.tasks else self.eval_tasks[tid]

    # ----------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        # Episodes launched ahead are not in the checkpoint: a resumed run samples their tasks again.
        cursor = self.ahead.cursor if self.ahead is not None else self.cursor.state()
        state = {"step": self.step, "cursor": cursor, "demo_cursor": self.demo_cursor.state(),
                 "python_rng": random.getstate(),
                 "update_rng": self.update_rng.getstate(),
                 "torch_rng": torch.get_rng_state().tolist()}
        self.learner.save_checkpoint(str(self.run.begin_checkpoint(self.step)), state)
        self.run.commit_checkpoint(self.step, self.cfg.train.keep_checkpoints)

    def _resume(self) -> None:
        found = self.run.latest_checkpoint()
        if found is None:
            print(f"--resume: no checkpoint in {self.run.path}/checkpoints; starting from step 0", file=sys.stderr)
            return
        self._restore(found[1])
        print(f"resumed from {found[1]} (step {self.step})", file=sys.stderr)

    def _restore(self, checkpoint) -> None:
        """Learner, driver state and engines as they were at `checkpoint` (None: at the start of the run)."""
        if checkpoint is None:
            state = {"step": 0, "cursor": {"epoch": 0, "index": 0}, "demo_cursor": {"epoch": 0, "index": 0}}
            random.seed(self.cfg.seed)
            torch.manual_seed(self.cfg.seed)
            self.update_rng = random.Random(self.cfg.seed)
        else:
            state = self.learner.load_checkpoint(str(checkpoint))
            random.setstate(_as_rng_state(state["python_rng"]))
            if "update_rng" in state:  # checkpoints written before mini-batches existed have none
                self.update_rng.setstate(_as_rng_state(state["update_rng"]))
            torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        self.step = self.learner_version = state["step"]
        self.cursor.restore(state["cursor"])
        if "demo_cursor" in state:  # checkpoints written before the demonstration term have none
            self.demo_cursor.restore(state["demo_cursor"])
        # The engines hold newer weights (or, after a --resume, the base model's): give them the learner's.
        ref = self.learner.state_dict_ref()
        self._wait([w.sync_weights.remote(ref, self.step) for w in self.rollout_workers],
                   "the rollout workers (weight sync)")

    def _build_learner(self):
        from actors.learner import LearnerGroup, LearnerSettings

        lc = self.cfg.learner
        return LearnerGroup(LearnerSettings.from_config(self.cfg, self.model_path), num_ranks=lc.num_ranks,
                            use_gpu=self.use_gpu, timeout_s=lc.timeout_s)

    def recover_learner(self, error: LearnerFailed) -> None:
        """A rank died, raised or hung, so the group is lost: a new one from the last checkpoint (from the start
        without one), with the driver's state and logs rewound to that step, so the steps since are run again and
        logged once. After learner.max_restarts rebuilds the run stops (ActorFailed) with the rank's error."""
        reason = str(error).strip().splitlines()[0]
        self.learner.shutdown()
        limit = self.cfg.learner.max_restarts
        if self.learner_restarts >= limit:
            raise ActorFailed(f"{reason} (learner.max_restarts = {limit} rebuilds used)") from error
        self.learner_restarts += 1
        found = self.run.latest_checkpoint()
        print(f"{reason}; rebuilding the learner ({self.learner_restarts} of learner.max_restarts = {limit}) from "
              f"{found[1] if found else 'the start'} and repeating the steps since", file=sys.stderr)
        self.learner = self._build_learner()
        if self.ahead is not None:  # sampled by weights the rewind drops; the engines finish them before the sync
            self.collect(self.ahead)
            self.ahead = None
        self.run.rewind()
        self._restore(found[1] if found else None)

    # ------------------------------------------------------------- evaluate
    def eval_due(self) -> bool:
        every, steps = self.cfg.train.eval_every, self.cfg.train.steps
        return bool(self.eval_tasks) and (self.step == steps or (every > 0 and self.step % every == 0))

    def evaluate(self) -> dict:
        """eval/... metrics on the held-out tasks: one greedy episode each (success), and train.eval_trials sampled
        episodes each for tau2's pass^k. The episodes go to eval_trajectories.jsonl."""
        ids, trials = list(self.eval_tasks), self.cfg.train.eval_trials
        greedy = self.rollout(ids, 1, greedy=True)
        sampled = self.rollout(ids, trials) if trials else []
        for trajs in (greedy, sampled):
            self.run.log_trajectories(self.step, trajs, [_verifier_score(t) for t in trajs], "eval_trajectories.jsonl")
        return heldout_metrics(greedy, sampled, trials)

    def evaluate_start(self) -> None:
        """Held-out metrics of the starting weights as step 0's row; a resumed run keeps the ones it has."""
        if self.eval_tasks and self.step == 0 and self.heldout_before() is None:
            self.run.log_metrics(0, self.evaluate())

    def heldout_before(self) -> float | None:
        """Held-out success of the starting weights (step 0's row), also after a resume."""
        return next((m["eval/success"] for m in self.run.metrics() if m["step"] == 0 and "eval/success" in m), None)

    def export_model(self) -> None:
        """The trained policy as a plain HF folder, RUN_DIR/model, with the run's config beside it (telerl.yaml):
        what rl.evaluate, rl.sft and model.name take."""
        from rl.config import redacted_yaml
        from rl.models import MODEL_CONFIG_FILE

        self.learner.save_hf(str(self.run.path / "model"), {MODEL_CONFIG_FILE: redacted_yaml(self.cfg)})

    def close(self) -> None:
        from rl.report import write_report

        metrics = self.run.metrics()
        if metrics:
            write_report(metrics, self.run.path / "report.png")
        self.run.close()
        for w in self.rollout_workers:
            try:
                ray.get(w.shutdown.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self.learner.shutdown()
        self.env.shutdown()


def load_demonstrations(cfg: Config, model_path: str) -> list[tuple[list[int], list[int]]]:
    """The demonstration term's (token ids, loss mask) rows: the expert's passed episodes on the training tasks,
    algorithm.demo_limit of them, encoded with the policy's tokenizer; drawn exactly as `rl.sft --limit` draws."""
    from transformers import AutoTokenizer

    from rl.demonstrations import demonstration_rows

    try:
        return demonstration_rows(cfg, AutoTokenizer.from_pretrained(model_path), "expert",
                                  limit=cfg.algorithm.demo_limit)
    except ValueError as e:
        raise NotReady(f"algorithm.demo_coef={cfg.algorithm.demo_coef:g}: {e}") from None


def _verifier_score(t: Trajectory) -> Score:
    return Score(reward=t.eval.reward, components={"tau2": t.eval.reward, "success": float(t.eval.success)})


def episode_metrics(trajs: list[Trajectory], scores: list[Score]) -> dict:
    n = max(1, len(trajs))
    out = {"reward/mean": sum(s.reward for s in scores) / n,
           "success_rate": sum(t.eval.success for t in trajs) / n,
           "episodes": len(trajs),
           "episode/turns": sum(t.turns for t in trajs) / n,
           "episode/tool_calls": sum(t.tool_calls for t in trajs) / n,
           "episode/tokens": sum(len(t.token_ids) for t in trajs) / n,
           "episode/generated_tokens": sum(t.generated_tokens for t in trajs) / n,
           "episode/truncated": sum(t.truncated for t in trajs) / n,
           # episodes scored 0 for reasons not the agent's (counts, not rates: any of them is worth a look)
           "episodes/eval_failed": sum(t.eval.failure == "eval_failed" for t in trajs),
           "episodes/user_error": sum(t.eval.failure == "user_error" for t in trajs)}
    # A component absent from some episodes (e.g. judge: only tasks with NL assertions) averages over the others.
    for key in sorted({k for s in scores for k in s.components}):
        values = [s.components[key] for s in scores if s.components.get(key) is not None]
        out[f"reward/{key}"] = sum(values) / len(values)
    return out


def check_staleness(trajs: list[Trajectory], version: int, bound: int) -> int:
    """train.async_steps' guarantee, checked on every batch before it trains: no episode was sampled by weights
    more than `bound` optimizer steps older than the learner's (`version`). Returns the largest lag."""
    lag = max((version - t.policy_version for t in trajs), default=0)
    if lag > bound:
        raise RuntimeError(f"episodes sampled by policy version {version - lag} while the learner is at {version}: "
                           f"more than train.async_steps = {bound} behind (a bug in the training loop)")
    return lag


class EpisodeFailures(RuntimeError):
    """Too many episodes of one step failed for reasons not the agent's (train.max_failed_episodes)."""


def check_failures(trajs: list[Trajectory], step: int, limit: int | None) -> None:
    """Stop the run when more than `limit` episodes of the step failed outside the agent's control (None: all of
    them): a broken judge or customer endpoint would otherwise train on rewards of 0 that mean nothing."""
    failed = [t for t in trajs if t.eval.failure]
    if not failed or len(failed) <= (len(trajs) - 1 if limit is None else limit):
        return
    counts = Counter(t.eval.failure for t in failed)
    kinds = ", ".join(f"{counts[k]} {k}" for k in sorted(counts))
    raise EpisodeFailures(f"step {step}: {len(failed)} of {len(trajs)} episodes failed outside the agent's control "
                          f"({kinds}; train.max_failed_episodes={limit}); first: {failed[0].task_id}: "
                          f"{failed[0].eval.note}. The episodes are in trajectories.jsonl.")


def _split_rollout_time(wall: float, trajs: list[Trajectory]) -> dict:
    """Episodes run concurrently, each alternating generation and env calls; split the rollout's wall time by the
    average share of an episode's own time spent waiting on its environment."""
    env_share = sum(t.timings.env_share for t in trajs) / max(1, len(trajs))
    return {"time/generate": wall * (1 - env_share), "time/env": wall * env_share}


def _as_rng_state(obj):
    return (obj[0], tuple(obj[1]), obj[2])


def main(argv: list[str] | None = None) -> int:
    def flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--resume", action="store_true", help="continue the run in run_dir from its last checkpoint")

    cfg, args = parse_cli(argv, description=__doc__, add_arguments=flags)
    from rl.models import ModelNotFoundError

    try:
        trainer = Trainer(cfg, resume=args.resume)
    except (NotReady, ModelNotFoundError, LearnerFailed) as e:  # a setting that cannot work: one line
        print(f"rl.train: {e}", file=sys.stderr)
        return 2
    try:
        trainer.evaluate_start()
        bar = tqdm(initial=trainer.step, total=cfg.train.steps, desc="train", unit="step", file=sys.stderr)
        after = None
        while trainer.step < cfg.train.steps:
            m = trainer.train_step()
            bar.n = trainer.step  # back to the checkpoint's step after a learner failure (m is None then)
            bar.refresh()
            if m is None:
                continue
            after = m.get("eval/success", after)
            shown = {"heldout": f"{after:.2f}"} if after is not None else {}
            bar.set_postfix(reward=f"{m['reward/mean']:.2f}", success=f"{m['success_rate']:.2f}",
                            step_s=f"{m['time/step']:.0f}", **shown)
        before, where = trainer.heldout_before(), f"{cfg.train.eval_split}, {len(trainer.eval_tasks)} tasks"
        if before is not None and after is not None:
            print(f"held-out success ({where}): before {before:.2f} -> after {after:.2f}")
        elif before is not None and cfg.train.steps == 0:
            print(f"held-out success ({where}): {before:.2f}")
        if cfg.train.steps > 0:
            trainer.export_model()
    except (EpisodeFailures, ActorFailed, LearnerFailed) as e:  # the reason, not a traceback: the logs are complete
        print(f"rl.train: stopped: {e}; `--resume` continues from the last checkpoint", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    policy = f", policy: {trainer.run.path / 'model'}" if cfg.train.steps > 0 else ""
    print(f"run directory: {trainer.run.path}  (report: {trainer.run.path / 'report.png'}{policy})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
