"""Typed run configuration: one dataclass schema, YAML + CLI overrides, validated on load.

Layering: schema defaults <- YAML file (``--config``) <- ``key=value`` overrides.
Every key is applied one at a time against the schema so that an unknown key, a
wrong type or a bad value fails immediately with a ``ConfigError`` that names the
dotted key, the value, what was expected and where it came from (``file:line`` or
the override string).  OmegaConf keeps no line numbers, so we compose the YAML
ourselves to recover them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from envs.tau2_telecom.endpoint import LLMEndpoint
from rl.choices import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    ENGINES,
    KL_KINDS,
    MIXINGS,
    MODES,
    POLICIES,
    PROMPTS,
    RM_NORMALIZATIONS,
    ROLLOUT_DTYPES,
    SPLITS,
    TRANSPORTS,
    USERS,
)

__all__ = [
    "Config",
    "ConfigError",
    "EnvConfig",
    "EnvPoolConfig",
    "AlgorithmConfig",
    "LLMEndpoint",
    "LearnerConfig",
    "ModelConfig",
    "RayConfig",
    "RewardConfig",
    "RewardModelConfig",
    "RolloutConfig",
    "SyncConfig",
    "TrainConfig",
    "config_to_yaml",
    "redacted_yaml",
    "load_config",
    "parse_cli",
    "validate",
]


class ConfigError(ValueError):
    """A config could not be loaded; the message is meant for the user, verbatim."""


# --------------------------------------------------------------------------- schema
# Fields use typing.Optional, not ``X | None``: omegaconf 2.3 rejects PEP 604 unions.


@dataclass
class EnvConfig:
    """The tau2 telecom environment an episode runs in."""

    mode: str = "solo"  # solo: the agent also runs the phone's tools; dual: a simulated customer does
    user: str = "scripted"  # customer simulator in dual mode: scripted | llm
    policy: str = "manual"  # which of tau2's two tech-support policies the agent follows: manual | workflow
    prompt: str = "full"  # full: tau2's policy documents + full tool schemas (~8-10k tokens); compact: without
    # them, short schemas (~3.4k in the tiny tokenizer); minimal: without them, one `name(args)` line a tool (~0.7k)
    split: str = "train"  # tau2 task split: small | train | test | base | full
    tasks_file: Optional[str] = None  # a tau2 task JSON file; overrides split when set
    max_faults: Optional[int] = None  # keep only tasks with at most this many faults (training and held-out tasks)
    max_turns: int = 30  # agent turns per episode
    max_errors: int = 10  # tool-call errors before the episode ends (tau2's default)
    max_calls_per_turn: int = 8  # tool calls the agent may make in one turn
    max_argument_chars: int = 4096  # longest serialized tool-call arguments accepted


@dataclass
class EnvPoolConfig:
    """The Ray actors hosting environment sessions."""

    num_workers: int = 2  # EnvWorker actors (sessions are spread over them, least loaded first)
    max_restarts: int = 3  # Ray restarts of a crashed EnvWorker


@dataclass
class RayConfig:
    """How to reach (or start) the Ray cluster."""

    address: Optional[str] = None  # None = start a local cluster
    num_cpus: Optional[int] = None  # CPUs for a local cluster; None = all


@dataclass
class TinyModelConfig:
    """Shape of the random-init model that model.name "tiny" builds (rl.models.build_tiny_model); ignored otherwise."""

    layers: int = 2
    hidden: int = 128  # heads = hidden / 64 (vLLM's CPU attention wants head_dim 64); kv heads = max(1, heads / 4)
    intermediate: int = 256  # MLP width
    max_positions: int = 4096  # context cap (RoPE: no position weights)


@dataclass
class ModelConfig:
    """The policy model."""

    name: str = "tiny"  # "tiny" (random init, domain tokenizer) | "smollm2-135m" | a local HF folder | a hub id
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class RolloutConfig:
    """vLLM rollout workers running the agent loop."""

    num_workers: int = 1  # RolloutWorker actors (one vLLM engine each)
    num_cpus: int = 1  # CPUs per worker on a CPU cluster (ignored with GPUs: one GPU each)
    max_model_len: int = 4096  # prompt + whole conversation
    max_new_tokens: int = 256  # per assistant turn
    temperature: float = 1.0  # sampling temperature; the learner's logprobs use it too (logits / temperature)
    top_p: float = 1.0
    # min-p sampling: drop tokens less likely than min_p x the most likely one. With a high temperature it explores
    # the choices the policy hesitates between (which tool, which fix) without sampling the tail that breaks a
    # tool call's JSON. 0 = off.
    min_p: float = 0.0
    kv_cache_gib: float = 1.0  # CPU only: KV cache size (vLLM-CPU would otherwise take most of the RAM)
    gpu_memory_utilization: float = 0.5  # GPU only
    # auto: in_process on CPU (engine and model in the actor's process: starts ~85 s sooner on 2 cores, ~1.2 GB
    # less), async on GPU (vLLM's AsyncLLM, EngineCore in its own process, overlapping scheduling with the GPU).
    engine: str = "auto"
    # auto: float32 on CPU (the learner's logprobs then match the engine's to ~1e-6), the model's own dtype on GPU.
    # bfloat16 on a CPU with bf16 instructions samples 1.3-1.45x faster with many episodes in flight (the decode
    # attention reads half the KV bytes; make bench, README); for sampling whose tokens are all that count
    # (rejection sampling), not for PPO ratios on CPU.
    dtype: str = "auto"
    # The driver's wait on a rollout worker (a step's episodes, an engine start, a weight sync): a worker that dies
    # or does not answer in time is replaced and its episodes re-run once; a second failure stops the run.
    timeout_s: Optional[float] = 3600.0


def engine_dtype(dtype: str, on_gpu: bool) -> str:
    """The dtype a vLLM engine gets for RolloutConfig.dtype (rollout workers and rl.serve alike)."""
    return dtype if dtype != "auto" else ("auto" if on_gpu else "float32")


@dataclass
class SyncConfig:
    """Weight sync after each step: learner rank 0's gathered weights -> every rollout engine."""

    # object_store: through Ray's object store, serialised once per engine (any cluster). collective: broadcast over
    # a process group of learner rank 0 and the engines' workers (gloo on CPU, NCCL on GPU), bucket by bucket, as
    # OpenRLHF and veRL do; a worker replaced after a failure, a rebuilt learner or a resume join a new group.
    transport: str = "object_store"
    bucket_mb: float = 64.0  # collective: tensors per broadcast, in MiB


@dataclass
class LearnerConfig:
    """DeepSpeed ZeRO-3 policy learner."""

    num_ranks: int = 2  # learner processes (Ray actors); gloo on CPU, NCCL on GPU
    # CPUs per rank without GPUs: its torch threads. On a laptop with more cores than ranks, give them the rest: the
    # learner's forward and backward scale with threads (the rollout engines and the learner mostly take turns).
    num_cpus: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # Linear lr warm-up over this many optimizer steps, then constant. Adam's first updates move every weight by
    # about lr whatever its gradient: from a fine-tuned start, a high lr without warm-up can break the policy.
    warmup_steps: int = 0
    micro_batch_size: int = 4  # sequences per forward/backward per rank
    gradient_checkpointing: bool = False
    # The sequences of a micro batch that start alike (a GRPO group's prompt) run their common prefix once, its
    # key/value states shared by the continuations (exact; off under gradient_checkpointing, which drops the cache).
    # A group gains most when it fits one micro batch: micro_batch_size >= algorithm.group_size.
    shared_prefix: bool = True
    offload: bool = False  # ZeRO-3 CPU offload (GPU runs)
    # A learner call (train step, weight gather, checkpoint) running longer than this fails with the rank's name
    # instead of hanging the driver (a dead or stuck rank); None = wait forever.
    timeout_s: Optional[float] = 3600.0
    # After a rank died or timed out, the driver builds a new group from the last checkpoint and repeats the steps
    # since (their logs rewound); this many times per run, then the run stops naming the rank.
    max_restarts: int = 2


@dataclass
class AlgorithmConfig:
    """The RL objective (rl/algorithms.py)."""

    name: str = "grpo"  # grpo | dr_grpo | rloo | reinforce_pp | rft (fine-tune on own verified successes)
    group_size: int = 4  # episodes per task per step (the baseline group)
    clip_eps: float = 0.2
    clip_eps_high: Optional[float] = None  # DAPO clip-higher; None = symmetric
    kl_coef: float = 0.0  # > 0 keeps a frozen reference policy for a KL penalty
    kl_kind: str = "k3"  # k1 | k2 | k3
    aggregation: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
    drop_zero_variance_groups: bool = False  # DAPO dynamic sampling: skip groups with equal rewards
    recompute_old_logprobs: bool = False  # use the learner's logprobs instead of the sampler's (bf16 on GPU)
    # Truncated importance sampling, with recompute_old_logprobs: each token's loss is weighted by
    # min(learner's old logprob / the sampler's, tis_cap), correcting for the sampler's numerics and, with
    # train.async_steps, for episodes sampled by the previous weights. None = no weight.
    tis_cap: Optional[float] = None
    # PPO's reuse of a rollout batch (CleanRL's update_epochs / num_minibatches): optimizer steps per RL step =
    # update_epochs * num_minibatches; the clip ratio is always taken against the sampler's logprobs.
    update_epochs: int = 1  # passes over the step's episodes
    num_minibatches: int = 1  # each pass is shuffled and split into this many optimizer steps
    # InstructGPT's PPO-ptx: every optimizer step adds demo_coef x the NLL per token of demo_batch demonstrations
    # (the expert's passed episodes on the training tasks, demo_limit of them drawn as `rl.sft --limit` draws them:
    # with the same seed and config, the SFT's own set), so that RL moves decisions without unlearning the tool-call
    # format and argument copying the warm start learned. 0 = off.
    demo_coef: float = 0.0
    demo_batch: int = 4  # demonstrations per optimizer step (cycled through in a seeded order)
    demo_limit: Optional[int] = 100  # None: every passed demonstration that fits rollout.max_model_len


@dataclass
class RewardConfig:
    """How the reward actor mixes its components (all logged every step; rl/rewards.py).

    checks = task_weight * tau2 + env_assertion_weight * env_assertions + action_weight * actions - penalty
    soft   = rm_weight * rm (learned score, normalised to [0, 1]) + judge_weight * judge (NL assertions met)
    mixing: weighted        reward = checks + soft
            gated           reward = checks + soft squeezed below half the smallest gap between distinct check
                            scores of the same task in the batch: the soft score only orders episodes with the
                            same verified outcome and can never flip two that differ
            multiplicative  reward = checks * (1 - w + soft), w = rm_weight + judge_weight <= 1: soft scales a
                            verified reward, never creates one
    """

    task_weight: float = 1.0  # tau2's verifiable reward (0/1 per reward_basis)
    env_assertion_weight: float = 0.0  # partial credit: fraction of env assertions met
    action_weight: float = 0.0  # partial credit: fraction of required actions performed
    malformed_call_penalty: float = 0.0  # subtracted per rejected tool call (the format component)
    max_penalty: float = 1.0  # cap on the total malformed-call penalty
    mixing: str = "weighted"  # weighted | gated | multiplicative
    rm_path: Optional[str] = None  # HF folder written by `python -m rl.rm.train`; None = no learned score
    rm_weight: float = 0.0  # weight of the learned score (needs rm_path)
    rm_normalization: str = "train_stats"  # train_stats: sigmoid of the z-score by the RM's training scores | batch
    rm_max_len: Optional[int] = None  # tokens the RM sees per episode (start cut); None = what it was trained on
    judge_weight: float = 0.0  # weight of the LLM judge's NL-assertion score (needs judge.model)
    judge_votes: int = 1  # judge samples per assertion; the majority decides (ties: not met)
    judge_seed: int = 0  # seeds the order in which assertions are shown to the judge
    # On-policy audit (rl/reward_audit.py, logged every step as reward/<rm|judge>_vs_verifier/...): warn when a
    # component ranks the step's passed episodes above its failed ones (same task) less often than this, for
    # audit_patience steps in a row. None = log the audit, never warn.
    audit_min_agreement: Optional[float] = None
    audit_patience: int = 3
    # The driver's wait on the reward actor for a batch's scores (an RM forward, judge calls): a dead or hung actor
    # is replaced and the batch scored again once; a second failure stops the run. None = wait forever.
    timeout_s: Optional[float] = 1800.0


@dataclass
class RewardModelConfig:
    """Bradley-Terry reward model training (python -m rl.rm.train) on pairs in OpenRLHF's JSONL layout."""

    base_model: str = "tiny"  # causal LM the scalar head goes on: tiny | smollm2-135m | a local HF folder | hub id
    train_file: str = ""  # pairs JSONL: {"prompt": [...], "chosen": [...], "rejected": [...], "subset": ...}
    eval_file: Optional[str] = None  # pairs JSONL evaluated after training (rl.rm.eval report)
    out: Optional[str] = None  # where the trained RM goes; None = <run_dir>/rm
    epochs: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 16  # pairs per optimizer step (all ranks)
    micro_batch_size: int = 4  # pairs per forward/backward on one rank
    num_ranks: int = 2  # DeepSpeed ZeRO-3 ranks (Ray actors)
    max_len: int = 1024  # tokens per side; longer conversations lose their start
    margin_scale: float = 0.0  # loss -log sigmoid(r_chosen - r_rejected - margin_scale * margin)
    gradient_checkpointing: bool = False
    # Train only the top N transformer layers, the final norm and the head; the layers below stay the pretrained
    # ones (forward only: no backward through them, no optimizer state). None = every weight.
    train_layers: Optional[int] = None
    # Optimizer steps between checkpoints in <run_dir>/checkpoints (rl.rm.train --resume continues from the newest);
    # 0 = none. The newest keep_checkpoints are kept.
    checkpoint_every: int = 0
    keep_checkpoints: int = 2


@dataclass
class TrainConfig:
    """The training loop."""

    steps: int = 10  # optimizer steps (one rollout batch each); 0 = only the held-out evaluation of model.name
    tasks_per_step: int = 4  # distinct tasks per step; episodes = tasks_per_step * algorithm.group_size
    checkpoint_every: int = 5  # steps; the last step is always checkpointed
    eval_split: str = "test"  # held-out tau2 split; its tasks are removed from the training tasks
    eval_tasks: int = 0  # held-out tasks (a fixed sample when fewer than the split has); 0 = no evaluation
    eval_every: int = 0  # steps between held-out evaluations (also before step 1 and after the last); 0 = only those
    eval_trials: int = 0  # sampled episodes per held-out task for tau2's pass^1..pass^k; 0 = greedy success only
    # Training tasks set aside to choose a recipe or its settings without looking at the held-out tasks (a fixed draw,
    # the same for every seed): never trained on, sampled or imitated (rl.train, rl.sft, rl.rft); rl.rft evaluates
    # them greedy after every stage. 0 = none.
    validation_tasks: int = 0
    keep_checkpoints: int = 2  # newest kept on disk
    # 1 = one-step off-policy: the next step's episodes are generated, by the weights of the step before, while
    # the learner trains this one (weights sync when both are done; the PPO ratio is taken against the logprobs
    # the episodes were sampled with). 0 = synchronous: every episode comes from the current weights.
    async_steps: int = 0
    # Train on these training tasks only (rl.sft's demonstrations too): e.g. a few tasks, to see that RL can fit
    # them at all. An id that is not a training task of this config is an error. None = every training task.
    task_ids: Optional[list[str]] = None
    # Episodes of one step that may fail for reasons not the agent's (tau2's evaluator raised, the customer simulator
    # failed) before the run stops with the reason; None = stop only when every episode of a step failed.
    max_failed_episodes: Optional[int] = None


@dataclass
class Config:
    seed: int = 0  # global RNG seed
    run_dir: str = "runs/default"  # where logs, checkpoints and the config snapshot go
    env: EnvConfig = field(default_factory=EnvConfig)
    user_llm: LLMEndpoint = field(default_factory=LLMEndpoint)  # simulated customer when env.user == "llm"
    judge: LLMEndpoint = field(default_factory=LLMEndpoint)  # NL-assertion judge; disabled when model == ""
    env_pool: EnvPoolConfig = field(default_factory=EnvPoolConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rm: RewardModelConfig = field(default_factory=RewardModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------- validation
# A check returns None when the value is fine, else a phrase saying what was expected.
Check = Callable[[Any], str | None]


def one_of(*choices: Any) -> Check:
    return lambda v: None if v in choices else "one of: " + ", ".join(map(str, choices))


def positive(v: Any) -> str | None:
    return None if v > 0 else "a value > 0"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "a value >= 0"


def finite_non_negative(v: Any) -> str | None:
    return None if math.isfinite(v) and v >= 0 else "a finite value >= 0"


def fraction(v: Any) -> str | None:
    return None if 0 < v <= 1 else "a value in (0, 1]"


def non_empty(v: Any) -> str | None:
    return None if v else "a non-empty string"


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


# Per-field rules, keyed by section type so a section reused under several keys
# (user_llm, judge) is checked everywhere.  New sections add a row here.
RULES: dict[type, dict[str, Check]] = {
    Config: {"run_dir": non_empty},
    EnvConfig: {
        "mode": one_of(*MODES),
        "user": one_of(*USERS),
        "policy": one_of(*POLICIES),
        "prompt": one_of(*PROMPTS),
        "split": one_of(*SPLITS),
        "tasks_file": optional(non_empty),
        "max_faults": optional(positive),
        "max_turns": positive,
        "max_errors": positive,
        "max_calls_per_turn": positive,
        "max_argument_chars": positive,
    },
    LLMEndpoint: {"temperature": non_negative, "max_tokens": positive},
    EnvPoolConfig: {"num_workers": positive, "max_restarts": non_negative},
    RayConfig: {"num_cpus": optional(positive)},
    ModelConfig: {"name": non_empty},
    TinyModelConfig: {"layers": positive, "hidden": lambda v: None if v > 0 and v % 64 == 0 else "a multiple of 64",
                      "intermediate": positive, "max_positions": positive},
    RolloutConfig: {"num_workers": positive, "num_cpus": positive, "max_model_len": positive,
                    "max_new_tokens": positive, "temperature": non_negative, "top_p": fraction,
                    "min_p": lambda v: None if 0 <= v < 1 else "in [0, 1)",
                    "kv_cache_gib": positive, "gpu_memory_utilization": fraction, "engine": one_of(*ENGINES),
                    "dtype": one_of(*ROLLOUT_DTYPES),
                    "timeout_s": optional(positive)},
    SyncConfig: {"transport": one_of(*TRANSPORTS), "bucket_mb": positive},
    LearnerConfig: {"num_ranks": positive, "num_cpus": positive, "lr": positive, "weight_decay": non_negative,
                    "grad_clip": positive,
                    "warmup_steps": non_negative, "micro_batch_size": positive, "timeout_s": optional(positive),
                    "max_restarts": non_negative},
    AlgorithmConfig: {"name": one_of(*ADVANTAGE_ESTIMATORS), "group_size": positive,
                      "clip_eps": positive, "clip_eps_high": optional(positive), "kl_coef": non_negative,
                      "kl_kind": one_of(*KL_KINDS), "aggregation": one_of(*AGGREGATIONS),
                      "update_epochs": positive, "num_minibatches": positive, "demo_coef": finite_non_negative,
                      "demo_batch": positive, "demo_limit": optional(positive), "tis_cap": optional(positive)},
    # weights finite and >= 0: a NaN or negative one would break the gated mixing's guarantee
    RewardConfig: {"task_weight": finite_non_negative, "env_assertion_weight": finite_non_negative,
                   "action_weight": finite_non_negative, "malformed_call_penalty": finite_non_negative,
                   "max_penalty": finite_non_negative, "mixing": one_of(*MIXINGS), "rm_path": optional(non_empty),
                   "rm_weight": finite_non_negative, "rm_normalization": one_of(*RM_NORMALIZATIONS),
                   "rm_max_len": optional(positive), "judge_weight": finite_non_negative, "judge_votes": positive,
                   "audit_min_agreement": optional(fraction), "audit_patience": positive,
                   "timeout_s": optional(positive)},
    RewardModelConfig: {"base_model": non_empty, "eval_file": optional(non_empty), "out": optional(non_empty),
                        "epochs": positive, "lr": positive, "weight_decay": non_negative, "batch_size": positive,
                        "micro_batch_size": positive, "num_ranks": positive, "max_len": positive,
                        "margin_scale": non_negative, "checkpoint_every": non_negative,
                        "keep_checkpoints": positive, "train_layers": optional(positive)},
    TrainConfig: {"steps": non_negative, "tasks_per_step": positive, "checkpoint_every": positive,
                  "eval_split": one_of(*SPLITS), "eval_tasks": non_negative, "eval_every": non_negative,
                  "eval_trials": non_negative, "validation_tasks": non_negative,
                  "async_steps": lambda v: None if v in (0, 1) else "0 (synchronous) or 1 (one step off-policy)",
                  "keep_checkpoints": positive, "max_failed_episodes": optional(non_negative),
                  "task_ids": optional(lambda v: None if len(v) else "a non-empty list of task ids")},
}


class _Invalid(Exception):
    """Internal: a failed rule, before load_config adds where the value came from."""

    def __init__(self, key: str, value: Any, expected: str, related: str | None = None):
        super().__init__(key)
        self.key, self.value, self.expected, self.related = key, value, expected, related


def _llm_user_needs_model(cfg: Config) -> None:
    if cfg.env.user == "llm" and not cfg.user_llm.model:
        raise _Invalid("user_llm.model", cfg.user_llm.model,
                       "a litellm model name because env.user is 'llm'", related="env.user")


def _soft_components_need_sources(cfg: Config) -> None:
    if cfg.reward.rm_weight > 0 and not cfg.reward.rm_path:
        raise _Invalid("reward.rm_path", cfg.reward.rm_path,
                       "a trained reward model folder because reward.rm_weight > 0", related="reward.rm_weight")
    if cfg.reward.judge_weight > 0 and not cfg.judge.model:
        raise _Invalid("judge.model", cfg.judge.model,
                       "a litellm model name because reward.judge_weight > 0", related="reward.judge_weight")


def _mixing_is_well_posed(cfg: Config) -> None:
    r = cfg.reward
    if r.mixing == "gated":
        # Within a batch the gate keeps each task group's check-score order; an episode scored alone (the OpenRLHF
        # plugin) only has this bound: the best failure must stay below the worst success with any soft score.
        penalty = r.max_penalty if r.malformed_call_penalty > 0 else 0.0
        bound = r.env_assertion_weight + r.action_weight + penalty + r.rm_weight + r.judge_weight
        if r.task_weight <= bound:
            raise _Invalid("reward.task_weight", r.task_weight,
                           f"more than env_assertion_weight + action_weight + max_penalty + rm_weight + judge_weight "
                           f"(= {bound:g}) with mixing 'gated', so a verified success always outscores a failure",
                           related="reward.mixing")
    if r.mixing == "multiplicative" and r.rm_weight + r.judge_weight > 1:
        raise _Invalid("reward.rm_weight", r.rm_weight,
                       "rm_weight + judge_weight <= 1 with mixing 'multiplicative'", related="reward.mixing")


def _top_p_needs_learner_logprobs(cfg: Config) -> None:
    # The learner divides logits by the temperature like the sampler, but it cannot truncate to the nucleus (top_p)
    # or the min-p set: then the sampler's logprobs and the learner's differ, so the PPO ratio must use the learner's.
    r = cfg.rollout
    for key, value, truncates in (("rollout.top_p", r.top_p, r.top_p < 1), ("rollout.min_p", r.min_p, r.min_p > 0)):
        if truncates and not cfg.algorithm.recompute_old_logprobs:
            raise _Invalid("algorithm.recompute_old_logprobs", False,
                           f"true when {key} = {value:g} (the sampler's logprobs are the truncated distribution's)",
                           related=key)


def _tis_needs_learner_logprobs(cfg: Config) -> None:
    # The weight is learner's old logprob / the sampler's: without the recompute the two are the same numbers.
    if cfg.algorithm.tis_cap is not None and not cfg.algorithm.recompute_old_logprobs:
        raise _Invalid("algorithm.recompute_old_logprobs", False,
                       f"true when algorithm.tis_cap = {cfg.algorithm.tis_cap:g} (the weight compares the learner's "
                       f"old logprobs with the sampler's)", related="algorithm.tis_cap")


def _rft_keeps_every_success(cfg: Config) -> None:
    # Dynamic sampling drops groups whose rewards tie: under rft that is every group the policy solves each time.
    if cfg.algorithm.name == "rft" and cfg.algorithm.drop_zero_variance_groups:
        raise _Invalid("algorithm.drop_zero_variance_groups", True,
                       "false with algorithm.name 'rft' (it would drop the groups where every episode passed)",
                       related="algorithm.name")


# Rules spanning several keys; each raises _Invalid.
CROSS_RULES: list[Callable[[Config], None]] = [_llm_user_needs_model, _soft_components_need_sources,
                                               _mixing_is_well_posed, _top_p_needs_learner_logprobs,
                                               _tis_needs_learner_logprobs, _rft_keeps_every_success]


def _check(obj: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            _check(value, key + ".")
            continue
        rule = RULES.get(type(obj), {}).get(f.name)
        try:
            expected = rule(value) if rule else None
        except TypeError:  # a hand-built Config can hold any type; loaded ones are already typed
            expected = f"a value of type {f.type}"
        if expected:
            raise _Invalid(key, value, expected)


def _validate(cfg: Config) -> None:
    _check(cfg)
    for rule in CROSS_RULES:
        rule(cfg)


def validate(cfg: Config) -> Config:
    """Check value constraints the type system cannot express; raises ConfigError."""
    try:
        _validate(cfg)
    except _Invalid as e:
        raise ConfigError(_message(e.key, e.value, e.expected)) from None
    return cfg


# ---------------------------------------------------------------------- loading

_UNSET = object()


def _message(key: str, value: Any = _UNSET, expected: str = "", where: str = "") -> str:
    msg = f"{where}: " if where else ""
    msg += f"config key '{key}'"
    if value is not _UNSET:
        msg += f": got {value!r}"
    if expected:
        msg += f", expected {expected}"
    return msg


def _describe(tp: Any) -> str:
    """Human phrase for a schema annotation, for 'expected ...' messages."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return _describe(inner[0]) + " or null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# A source maps a key path to a location string, e.g. "configs/x.yaml:7" or "override 'a=b'".
Where = Callable[[tuple[str, ...]], str]


def _apply(node: DictConfig, cls: type, data: dict, prefix: tuple[str, ...], where: Where,
           provenance: dict[str, str]) -> None:
    """Set ``data`` into the schema-backed ``node`` key by key, so errors name the exact key."""
    hints = _hints(cls)
    for raw_key, value in data.items():
        key = str(raw_key)
        path = prefix + (key,)
        dotted = ".".join(path)
        if key not in hints:
            raise ConfigError(_message(dotted, where=where(path))
                              + f" is unknown; expected one of: {', '.join(hints)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and value is None:
            continue  # "env:" with every key commented out means "no changes", not "delete section"
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            _apply(node[key], tp, value, path, where, provenance)
            continue
        if tp in (float, Optional[float]) and type(value) is int:
            value = float(value)  # "lr: 1" means 1.0 (omegaconf would warn about the implicit conversion)
        try:
            node[key] = value
        except OmegaConfBaseException:
            raise ConfigError(_message(dotted, value, _describe(tp), where(path))) from None
        provenance[dotted] = where(path)


def _yaml_lines(text: str, path: str) -> dict[tuple[str, ...], int]:
    """1-based line of every key path in a YAML mapping document; raises ConfigError on bad YAML."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: top level must be a mapping of config keys")
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.MappingNode, prefix: tuple[str, ...]) -> None:
        for k, v in node.value:
            p = prefix + (str(k.value),)
            if p in lines:  # PyYAML silently keeps the last duplicate; a typo'd copy would hide
                raise ConfigError(f"{path}:{k.start_mark.line + 1}: duplicate config key "
                                  f"'{'.'.join(p)}' (first at line {lines[p]})")
            lines[p] = k.start_mark.line + 1
            if isinstance(v, yaml.MappingNode):
                walk(v, p)

    walk(root, ())
    return lines


def _file_where(path: str, lines: dict[tuple[str, ...], int]) -> Where:
    def where(key_path: tuple[str, ...]) -> str:
        # Longest prefix that is a real key: a bad value under an unknown section points at the section.
        for n in range(len(key_path), 0, -1):
            if key_path[:n] in lines:
                return f"{path}:{lines[key_path[:n]]}"
        return path
    return where


def _load_file(schema: DictConfig, path: str, provenance: dict[str, str], chain: tuple[str, ...] = ()) -> None:
    """One YAML file; a top-level `base: other.yaml` (relative to this file) is loaded first, so presets such as
    configs/ablations/*.yaml only state what they change."""
    if os.path.realpath(path) in chain:
        raise ConfigError(f"{path}: `base` chain loops back to itself ({' -> '.join(chain + (path,))})")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    lines = _yaml_lines(text, path)
    try:
        # OmegaConf's YAML loader, so values parse exactly as in dotlist overrides (e.g. 1e-3 is a float).
        data = OmegaConf.to_container(OmegaConf.create(text), resolve=False) if lines else {}
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None
    if isinstance(data, dict) and "base" in data:
        base = data.pop("base")
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}:{lines[('base',)]}: config key 'base': got {base!r}, expected a YAML path")
        _load_file(schema, os.path.join(os.path.dirname(path), base), provenance,
                   chain + (os.path.realpath(path),))
    _apply(schema, Config, data, (), _file_where(path, lines), provenance)


_KEY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _apply_override(schema: DictConfig, override: str, provenance: dict[str, str]) -> None:
    def where(_path: tuple[str, ...]) -> str:
        return f"command-line override '{override}'"

    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not _KEY_RE.match(key):
        raise ConfigError(f"{where(())}: expected key=value with a dotted key, e.g. env.max_turns=5")
    if raw == "":
        value: Any = ""  # "judge.model=" means the empty string, not null
    else:
        try:  # OmegaConf's own value parsing: 5 -> int, null -> None, [a,b] -> list
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]), resolve=False)["v"]
        except Exception as e:  # noqa: BLE001 - any parse failure is the user's override
            raise ConfigError(f"{where(())}: cannot parse value {raw!r}: {str(e).splitlines()[0]}") from None
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    _apply(schema, Config, nested, (), where, provenance)


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Schema defaults <- YAML at ``path`` <- ``key=value`` overrides; typed and validated."""
    schema = OmegaConf.structured(Config)
    provenance: dict[str, str] = {}  # dotted key -> where its current value was set
    if path is not None:
        _load_file(schema, str(path), provenance)
    for override in overrides or []:
        _apply_override(schema, override, provenance)
    try:
        cfg = OmegaConf.to_object(schema)  # resolves ${...} interpolations, if any
    except OmegaConfBaseException as e:
        key = e.full_key or "?"
        raise ConfigError(_message(key, where=provenance.get(key, ""))
                          + f": {str(e).splitlines()[0]}") from None
    assert isinstance(cfg, Config)
    _keys_from_environment(cfg)
    try:
        _validate(cfg)
    except _Invalid as e:
        # Point at where the bad key was set, else at the key that made it required.
        where = provenance.get(e.key) or provenance.get(e.related or "", "")
        raise ConfigError(_message(e.key, e.value, e.expected, where)) from None
    return cfg


# API keys are best given as environment variables: then they are in no config file, command line, job entrypoint
# or log. A key set in the config or on the command line wins.
API_KEY_VARIABLES = {"judge": "TELERL_JUDGE_API_KEY", "user_llm": "TELERL_USER_LLM_API_KEY"}


def _keys_from_environment(cfg: Config) -> None:
    for section, variable in API_KEY_VARIABLES.items():
        endpoint = getattr(cfg, section)
        if endpoint.api_key in ("", "EMPTY") and os.environ.get(variable):
            endpoint.api_key = os.environ[variable]


def is_secret_key(key: str) -> bool:
    return "api_key" in key.rsplit(".", 1)[-1].lower()


def redact_overrides(items: list[str]) -> list[str]:
    """Command-line items with the value of every `*api_key*=...` override replaced by ***, for anything written
    down (meta.json, sweep files, job logs)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        out.append(f"{key}=***" if sep and is_secret_key(key) and value not in ("", "EMPTY") else item)
    return out


def secrets_to_environment(items: list[str]) -> tuple[list[str], dict[str, str]]:
    """Move `judge.api_key=...` / `user_llm.api_key=...` overrides into their environment variables (for a job
    whose entrypoint is stored and shown): (the other items, {variable: key})."""
    rest, env = [], {}
    for item in items:
        key, sep, value = item.partition("=")
        variable = API_KEY_VARIABLES.get(key.removesuffix(".api_key")) if key.endswith(".api_key") else None
        if sep and variable:
            env[variable] = value
        else:
            rest.append(item)
    return rest, env


def config_to_yaml(cfg: Config) -> str:
    """YAML snapshot of a loaded config; ``load_config`` on it gives an equal Config."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def redacted_yaml(cfg: Config) -> str:
    """config_to_yaml with every API key's value replaced by '***': what is written into run and model folders."""
    lines = []
    for line in config_to_yaml(cfg).splitlines():
        key, sep, value = line.partition(":")
        if is_secret_key(key.strip()) and value.strip() not in ("", "EMPTY", "''"):
            line = f"{key}{sep} '***'"
        lines.append(line)
    return "\n".join(lines) + "\n"


def parse_cli(argv: list[str] | None = None, description: str = "",
              add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
              ) -> tuple[Config, argparse.Namespace]:
    """``prog [--config PATH] [key=value ...]``; a bad config exits 2 with the message on stderr.
    ``add_arguments`` lets an entry point add its own flags (e.g. --resume)."""
    parser = argparse.ArgumentParser(description=description)
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("--config", metavar="PATH", default=None, help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides applied after the file, e.g. env.max_turns=5")
    # intermixed: overrides may come before, between or after the flags (`--config X seed=1 --lr 3e-3 run_dir=Y`)
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"{parser.prog}: config error: {e}", file=sys.stderr)
        sys.exit(2)
    return cfg, args
