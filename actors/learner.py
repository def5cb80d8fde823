"""The policy learner: N DeepSpeed ZeRO-3 ranks as Ray actors (LearnerRank), and LearnerGroup, the driver's handle.

The same code runs on a 2-core laptop (gloo, fp32, one CPU per rank) and on GPU nodes (nccl, bf16, one GPU per
rank). Every rank holds a 1/N shard of the parameters, gradients and AdamW state; each forward/backward gathers
layers on the fly, so every forward, backward, step and gather is a COLLECTIVE: all ranks must make the same
calls in the same order. LearnerGroup is the only intended caller and guarantees that by construction.

One train_step is one optimizer step over the whole batch the driver passes in; the loss of every micro batch is
weighted so that the update is the gradient of the batch-level objective (e.g. the token mean over all ranks),
however the sequences fall into ranks and micro batches.
"""
from __future__ import annotations

import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.rendezvous import rendezvous_address
from rl.algorithms import aggregation_units, policy_loss, token_logprobs
from rl.contracts import BatchTotals, TrainBatch
from rl.fast_start import loading_without_gc
from rl.tensors import pad_rows, pad_with_attention

if TYPE_CHECKING:
    from rl.config import Config

_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
# Where a train step's time goes, per rank (train_step's metrics, learner/<phase> in metrics.jsonl): the policy
# forward and the loss, the frozen reference's forward, backward, and DeepSpeed's step (the optimizer runs at the
# last micro batch).
PHASES = ("forward_s", "reference_s", "backward_s", "optimizer_s")


class LearnerFailed(RuntimeError):
    """A rank died, raised, or did not answer within the timeout. The others may be stuck in a collective: the
    group is unusable (shutdown, then a new group from the last checkpoint)."""


@dataclass(frozen=True)
class LearnerSettings:
    """Plain data (travels to the actors)."""

    model_path: str                 # local HF folder
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch_size: int = 4       # sequences per forward/backward on one rank
    gradient_checkpointing: bool = False
    offload: bool = False           # ZeRO-3 CPU offload of params+optimizer (GPU only; ignored on CPU)
    kl_coef: float = 0.0            # > 0 builds a frozen reference model (also ZeRO-3 sharded) for the KL term
    kl_kind: str = "k3"
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    aggregation: str = "token_mean"
    seed: int = 0
    lr_schedule_steps: int = 0      # > 0: linear warm-up (5 %) then linear decay to 0 at this step (SFT); 0: constant
    warmup_steps: int = 0           # without lr_schedule_steps: linear warm-up over these steps, then constant (RL)
    temperature: float = 1.0        # the sampler's: logits / temperature, as vLLM's processed logprobs
    demo_coef: float = 0.0          # weight of the NLL per token of the demonstrations passed to train_step
    tis_cap: float | None = None    # truncated importance weight's cap, for batches with behaviour_logprobs
    shared_prefix: bool = False     # a micro batch's common token prefix runs once (see _logits); exact either way
    num_cpus: int = 1               # CPUs (torch threads) per rank without GPUs

    @classmethod
    def from_config(cls, cfg: Config, model_path: str) -> LearnerSettings:
        """The learner section of the run config plus the loss's algorithm keys (both documented there)."""
        lc, a = cfg.learner, cfg.algorithm
        return cls(model_path=model_path, lr=lc.lr, weight_decay=lc.weight_decay, grad_clip=lc.grad_clip,
                   warmup_steps=lc.warmup_steps,
                   micro_batch_size=lc.micro_batch_size, gradient_checkpointing=lc.gradient_checkpointing,
                   offload=lc.offload, kl_coef=a.kl_coef, kl_kind=a.kl_kind, clip_eps=a.clip_eps,
                   clip_eps_high=a.clip_eps_high, aggregation=a.aggregation, seed=cfg.seed, demo_coef=a.demo_coef,
                   tis_cap=a.tis_cap, num_cpus=lc.num_cpus,
                   # HF turns the key/value cache off under gradient checkpointing, and sharing rides on the cache
                   shared_prefix=lc.shared_prefix and not lc.gradient_checkpointing,
                   # the PPO ratio compares the sampler's logprobs with ours: both of pi(.)^(1/T), renormalised
                   temperature=cfg.rollout.temperature or 1.0)


def deepspeed_config(s: LearnerSettings, use_gpu: bool, train: bool = True) -> dict:
    """ZeRO-3 config. train=False is the frozen reference model's (no optimizer)."""
    zero = {"stage": 3}
    if not use_gpu:
        # The configuration measured on CPU/gloo: 0 partitions every parameter (the default keeps those under
        # 1e5 elements whole on every rank, worth it on GPU to save gathers).
        zero["stage3_param_persistence_threshold"] = 0
    elif s.offload:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        if train:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    cfg = {
        "train_micro_batch_size_per_gpu": s.micro_batch_size,
        "gradient_accumulation_steps": 1,  # re-set per train_step (set_train_batch_size)
        "zero_optimization": zero,
        "bf16": {"enabled": use_gpu},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train:
        cfg["gradient_clipping"] = s.grad_clip
        # torch_adam: DeepSpeed's FusedAdam is JIT-compiled (needs nvcc) and has no CPU build. With GPU offload
        # the optimizer runs on CPU, where DeepSpeedCPUAdam (torch_adam off) is the fast one.
        cfg["optimizer"] = {"type": "AdamW",
                            "params": {"lr": s.lr, "weight_decay": s.weight_decay, "betas": [0.9, 0.999],
                                       "eps": 1e-8, "torch_adam": not (use_gpu and s.offload)}}
        if s.lr_schedule_steps > 0:
            cfg["scheduler"] = {"type": "WarmupDecayLR",
                                "params": {"warmup_min_lr": 0.0, "warmup_max_lr": s.lr, "warmup_type": "linear",
                                           "warmup_num_steps": max(1, s.lr_schedule_steps // 20),
                                           "total_num_steps": s.lr_schedule_steps}}
        elif s.warmup_steps > 0:
            cfg["scheduler"] = {"type": "WarmupLR",
                                "params": {"warmup_min_lr": 0.0, "warmup_max_lr": s.lr, "warmup_type": "linear",
                                           "warmup_num_steps": s.warmup_steps}}
    return cfg


def _skip_shm_allreduce_build() -> None:
    """Stop DeepSpeed from JIT-compiling its shared-memory all-reduce kernel when its comm backend starts.

    Only tensor-parallel inference (`inference_all_reduce`) uses that kernel, and it falls back to torch.distributed
    without it; ZeRO-3 training never calls it. Building it is g++ on two C++ files: ~1 min on a 2-core machine,
    on every fresh machine and again whenever the venv's path changes (the build folder is shared, so two checkouts
    rebuild it in turn), on every rank's critical path to its first step.
    """
    import importlib

    # `deepspeed.comm.torch` as an attribute is the torch package (deepspeed.comm star-imports it): look the module up.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def _import_muon_uncompiled() -> None:
    """Import DeepSpeed's Muon optimizer module with its kernels left uncompiled.

    `deepspeed.initialize` imports it on every rank (ZeRO asks `isinstance(optimizer, MuonWithAuxAdam)`), and the
    module applies torch.compile to three functions at import, which imports torch's inductor: ~2.9 CPU-s of each
    rank's start-up, for an optimizer telerl never configures (deepspeed_config always says AdamW). Imported first
    with DeepSpeed's compile decorator as a no-op, the class is the real one and the check answers as before.
    """
    import importlib

    from deepspeed.runtime import compiler

    real = compiler.compile
    compiler.compile = lambda: compiler.dummy_decorator
    try:
        importlib.import_module("deepspeed.runtime.zero.muon.muon_optimizer")
    finally:
        compiler.compile = real


class LearnerRank:
    """One ZeRO-3 rank (the Ray actor body; LearnerActor below is the actor class)."""

    def __init__(self, settings: LearnerSettings, rank: int, world_size: int, master_addr: str, master_port: int,
                 use_gpu: bool | None = None):
        """use_gpu None: whatever this process sees (LearnerGroup passes it, so a CPU run stays on CPU even on a
        node with GPUs)."""
        self.settings, self.rank, self.world_size = settings, rank, world_size
        if not (Path(settings.model_path) / "config.json").is_file():
            # Fail before the rendezvous and the slow imports, with the path in the message.
            raise FileNotFoundError(f"model_path {settings.model_path!r} is not a HF model folder on this node")
        self.use_gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
        if not self.use_gpu:  # Ray sets OMP_NUM_THREADS to the actor's CPUs only where the environment has none
            torch.set_num_threads(settings.num_cpus)
        # torch.distributed reads the rendezvous from the environment, and DeepSpeed picks its accelerator when it
        # is first imported: all of this must be set before `import deepspeed`.
        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "MASTER_ADDR": master_addr,
                           "MASTER_PORT": str(master_port),
                           # Ray gives each GPU actor exactly one visible device, so it is cuda:0 everywhere.
                           "LOCAL_RANK": "0" if self.use_gpu else str(rank)})
        if not self.use_gpu:
            os.environ["DS_ACCELERATOR"] = "cpu"
        with loading_without_gc():
            import deepspeed
            from transformers import AutoModelForCausalLM
            from transformers.integrations import HfDeepSpeedConfig

            _import_muon_uncompiled()
        _skip_shm_allreduce_build()

        # DeepSpeed's ZeRO-3 gathers call torch.distributed functions that torch has renamed: a FutureWarning per
        # gather on every rank (walls of them in the console) that no user can act on.
        warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)

        self._ds = deepspeed
        torch.manual_seed(settings.seed)
        t0 = time.perf_counter()
        if self.use_gpu:
            torch.cuda.set_device(0)
        deepspeed.init_distributed(dist_backend="nccl" if self.use_gpu else "gloo", auto_mpi_discovery=False)

        cfg = deepspeed_config(settings, self.use_gpu)
        # Must stay alive while models load: from_pretrained sees it (through a weakref) and builds the model under
        # zero.Init, so each rank only ever materialises its own shard.
        self._hf_ds_config = HfDeepSpeedConfig(cfg)
        dtype = torch.bfloat16 if self.use_gpu else torch.float32
        model = self.build_model(settings.model_path, dtype)
        if settings.gradient_checkpointing:
            self.hf_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # Only what is trained gets optimizer state (a reward model may keep its lower layers frozen).
        trained = [p for p in model.parameters() if p.requires_grad]
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=trained, config=cfg)
        self.engine.train()

        self.ref = None
        if settings.kl_coef > 0:
            ref = AutoModelForCausalLM.from_pretrained(settings.model_path, dtype=dtype)
            ref.config.use_cache = False
            ref.requires_grad_(False)
            self.ref, *_ = deepspeed.initialize(model=ref, config=deepspeed_config(settings, self.use_gpu, train=False))
            self.ref.eval()
        self.init_seconds = time.perf_counter() - t0

    @staticmethod
    def build_model(model_path: str, dtype) -> torch.nn.Module:
        """The trained module (called under HfDeepSpeedConfig, so it is built sharded). Subclasses put other heads
        on the same ZeRO-3 machinery (actors/rm_learner.py: a scalar reward head)."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        model.config.use_cache = False
        return model

    @staticmethod
    def hf_model(module: torch.nn.Module):
        """The HF PreTrainedModel inside the trained module (what is saved and synced, with HF parameter names)."""
        return module

    def ready(self) -> dict:
        return {"rank": self.rank, "init_seconds": self.init_seconds, "device": "cuda" if self.use_gpu else "cpu",
                "rss_mb": _rss_mb()}

    # ---- training ---------------------------------------------------------------------------------------------

    def train_step(self, batch: TrainBatch | None, demo: TrainBatch | None = None) -> dict:
        """One optimizer step on this rank's share. LearnerGroup sets batch.totals over ALL ranks (aggregation
        units, longest sequence) so that every micro loss gets its exact weight in the batch objective; called
        directly with no totals, a rank uses its own share's. demo: demonstrations whose mean NLL per token, times
        settings.demo_coef, joins the same step's loss (InstructGPT's PPO-ptx); batch None: that term alone (SFT)."""
        s, t0 = self.settings, time.perf_counter()
        W = self.world_size
        micro = self._micro_batches(batch, train=True) if batch is not None else []
        demo_micro = self._micro_batches(demo, train=False) if demo is not None else []
        n_tokens = sum(int(m["loss_mask"].sum()) for m in micro)
        totals, demo_totals = self._totals(batch) if micro else None, self._totals(demo) if demo is not None else None
        total_units = max(totals.units(s.aggregation), 1) if micro else 1
        total_tokens = max(totals.tokens, 1) if micro else 1

        # DeepSpeed averages gradients over ranks, hence the W factor: micro batch m gets weight
        # W * units_m / total (units: its loss tokens or its sequences, as aggregate() counts them), and
        # backward() is told not to divide by the accumulation steps as well.
        last = len(micro) + len(demo_micro) - 1
        self.engine.set_train_batch_size((last + 1) * s.micro_batch_size * W)
        sums = dict.fromkeys(("loss", "pg_loss", "kl", "clip_fraction", "approx_kl"), 0.0)
        phases = dict.fromkeys(PHASES, 0.0)
        lap = self._stopwatch(phases)
        for i, m in enumerate(micro):
            # Explicit boundary: the engine's own micro-step counter assumes a fixed accumulation count, but ours
            # changes with every batch.
            self.engine.set_gradient_accumulation_boundary(i == last)
            m = {k: v.to(self.engine.device) if torch.is_tensor(v) else v for k, v in m.items()}
            mask = m["loss_mask"]
            logp = self._logprobs(self.engine, m, needed=mask > 0)
            lap("forward_s")
            ref_logp = m.get("ref_logprobs")
            if self.ref is not None and ref_logp is None:
                with torch.no_grad():  # the reference forward is a collective too: every rank runs it
                    ref_logp = self._logprobs(self.ref, m, needed=mask > 0)
            lap("reference_s")
            loss, stats = policy_loss(logp, m["old_logprobs"], m["advantages"], mask, clip_eps=s.clip_eps,
                                      clip_eps_high=s.clip_eps_high, aggregation=s.aggregation,
                                      max_len=totals.max_len, ref_logp=ref_logp, kl_coef=s.kl_coef,
                                      kl_kind=s.kl_kind, behaviour_logp=m.get("behaviour_logprobs"),
                                      tis_cap=s.tis_cap)
            tokens = int(mask.sum())
            share = aggregation_units(mask, s.aggregation) / total_units
            lap("forward_s")
            # A micro batch of padding still runs backward (ZeRO-3's hooks are collectives); weight 0 does it.
            self.engine.backward(loss * (share * W), scale_wrt_gas=False)
            lap("backward_s")
            self.engine.step()
            lap("optimizer_s")
            # Metrics: each rank reports W * its part of the batch mean, so the group's average is the mean.
            # Loss terms weigh like the loss; clip_fraction / approx_kl are per-token means, weighed by tokens.
            for k, v, w in (("loss", loss.item(), share), ("pg_loss", stats["pg_loss"], share),
                            ("kl", stats["kl"], share),
                            ("clip_fraction", stats["clip_fraction"], tokens / total_tokens),
                            ("approx_kl", stats["approx_kl"], tokens / total_tokens),
                            ("is_weight", stats.get("is_weight"), tokens / total_tokens)):
                if v is not None:
                    sums[k] = sums.get(k, 0.0) + v * w * W
        if demo_micro:
            sums["demo_nll"] = 0.0
        for i, m in enumerate(demo_micro, start=len(micro)):
            self.engine.set_gradient_accumulation_boundary(i == last)
            m = {k: v.to(self.engine.device) if torch.is_tensor(v) else v for k, v in m.items()}
            mask = m["loss_mask"]
            # Untempered, as rl.sft fits them: the anchor is the warm start's own objective.
            logp = self._logprobs(self.engine, m, needed=mask > 0, tempered=False)
            nll = -(logp * mask).sum() / max(demo_totals.tokens, 1)  # this micro batch's part of the batch mean
            lap("forward_s")
            self.engine.backward(nll * (s.demo_coef * W), scale_wrt_gas=False)
            lap("backward_s")
            self.engine.step()
            lap("optimizer_s")
            sums["demo_nll"] += nll.item() * W
            sums["loss"] += s.demo_coef * nll.item() * W
        grad_norm = self.engine.get_global_grad_norm()
        return {**sums, "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
                "tokens": float(n_tokens), "lr": float(self.engine.get_lr()[0]), "seconds": time.perf_counter() - t0,
                **phases}

    def new_schedule(self, lr: float, steps: int) -> None:
        """Start a new fine-tuning stage on the weights as they are: a fresh AdamW state (its moments belong to the
        last stage's data) and a fresh linear warm-up (5 %) then decay to 0 over `steps`, as a new learner would have
        (rl.rft's rounds, without restarting the ranks)."""
        from deepspeed.runtime.lr_schedules import WarmupDecayLR

        self.engine.optimizer.optimizer.state.clear()  # torch's AdamW re-initialises an empty state at its next step
        self.engine.lr_scheduler = WarmupDecayLR(self.engine.optimizer, total_num_steps=steps, warmup_min_lr=0.0,
                                                 warmup_max_lr=lr, warmup_num_steps=max(1, steps // 20),
                                                 warmup_type="linear")

    def _stopwatch(self, totals: dict):
        """lap(phase): adds the time since the previous lap to totals[phase] (after the GPU's queued work ends)."""
        last = [time.perf_counter()]

        def lap(phase: str) -> None:
            if self.use_gpu:
                torch.cuda.synchronize()
            now = time.perf_counter()
            totals[phase] += now - last[0]
            last[0] = now

        return lap

    @torch.no_grad()
    def logprobs(self, batch: TrainBatch, reference: bool = False) -> list[list[float]]:
        """Per-token logprobs of the current policy (or the frozen reference), aligned with input_ids (position 0
        is 0). With a loss mask they are computed where some row of the micro batch has loss (all the PPO ratio
        and the KL term read) and the other positions hold 0: an agent episode is mostly prompt and observations,
        and the lm_head and log-softmax at every position would cost more than the rest of the pass. Without a
        loss mask, every position."""
        if reference and self.ref is None:
            raise ValueError("no reference model: algorithm.kl_coef is 0")
        out = []
        for m in self._micro_batches(batch, train=False):
            needed = m["loss_mask"] > 0 if "loss_mask" in m else None
            logp = self._logprobs(self.ref if reference else self.engine, m, needed=needed).cpu()
            out += [row[:n].tolist() for row, n in zip(logp, m["lengths"])]
        return out

    def _micro_batches(self, batch: TrainBatch, train: bool) -> list[dict]:
        """Split into micro batches of tensors, each right-padded to its own longest sequence (padding never sees
        loss). train: with the loss's inputs (loss mask, old logprobs, advantages)."""
        mbs = self.settings.micro_batch_size
        micro = []
        for start in range(0, len(batch), mbs):
            part = batch.rows(slice(start, start + mbs))
            ids, attn = pad_with_attention(part.input_ids)
            m = {"input_ids": ids, "attention_mask": attn, "lengths": [len(r) for r in part.input_ids]}
            if self.settings.shared_prefix:
                m["prefix_len"] = shared_prefix_len(part.input_ids)
            if train:
                for k in ("loss_mask", "old_logprobs", "advantages"):
                    m[k] = pad_rows(getattr(part, k), 0, torch.float32)
                for k in ("ref_logprobs", "behaviour_logprobs"):
                    if getattr(part, k) is not None:
                        m[k] = pad_rows(getattr(part, k), 0, torch.float32)
            elif part.loss_mask is not None:
                m["loss_mask"] = pad_rows(part.loss_mask, 0, torch.float32)
            micro.append(m)
        return micro

    def _totals(self, share: TrainBatch) -> BatchTotals:
        """The whole batch's totals: set by LearnerGroup, or (called directly) this share on every rank."""
        if share.totals is not None:
            return share.totals
        own = BatchTotals.of(share.input_ids, share.loss_mask)
        return replace(own, tokens=own.tokens * self.world_size, sequences=own.sequences * self.world_size)

    def _tempered(self, logits: torch.Tensor) -> torch.Tensor:
        """logits / the sampling temperature; at 1 the tensor itself (a (B, T, V) copy is worth avoiding)."""
        t = self.settings.temperature
        return logits if t == 1.0 else logits / t

    def _logprobs(self, engine, m: dict, needed: torch.Tensor | None = None, tempered: bool = True) -> torch.Tensor:
        """(B, T) logprob of each token given its prefix; with `needed` (B, T bool) only those tokens are
        computed and the rest are 0. Agent episodes are mostly prompt and observations: computing the
        lm_head only where the loss is (HF's logits_to_keep) saves most of the memory - a 4.4k-token episode
        of a 49k-vocabulary model has 0.9 GB of fp32 logits, and as much again for their gradient. tempered: divide
        the logits by the sampling temperature (the policy the sampler drew from)."""
        temper = self._tempered if tempered else (lambda x: x)
        dev = engine.device
        ids, attn = m["input_ids"].to(dev), m["attention_mask"].to(dev)
        if needed is None:
            logits = self._logits(engine, ids, attn, None, m.get("prefix_len"))
            # log_softmax in fp32 even when the model runs in bf16: ratios exp(logp - old) are sensitive to it.
            return token_logprobs(temper(logits.float()), ids)
        # Token t is predicted at position t-1; keep the positions any row of the micro batch needs.
        pos = needed[:, 1:].to(dev).any(0).nonzero().squeeze(-1)
        if pos.numel() == 0:
            pos = torch.zeros(1, dtype=torch.long, device=dev)  # padding micro batch: still run the collectives
        logits = temper(self._logits(engine, ids, attn, pos, m.get("prefix_len")).float())  # (B, K, V)
        targets = ids[:, pos + 1]
        lp = logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        return torch.zeros(ids.shape, dtype=lp.dtype, device=dev).index_copy(1, pos + 1, lp)

    @staticmethod
    def _logits(engine, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor | None,
                prefix_len: int | None) -> torch.Tensor:
        """(B, K, V) logits at positions `pos` (sorted; None = every position).

        prefix_len None: one forward of the (B, T) batch. Otherwise (learner.shared_prefix) the rows' common first
        prefix_len tokens run once, as a batch of one, and the B continuations run on top of its key/value states
        (repeated B times, so the gradient of every continuation flows back into the one prefix): for a GRPO group
        whose episodes share a 1-3k-token prompt, that is G - 1 prompts fewer to run forward and backward. Exact: the
        continuations see the same keys and values, at the same positions, as in the full batch. Every micro batch
        runs exactly two forwards in this mode (a throwaway one-token prefix when nothing is shared) because under
        ZeRO-3 each forward, and each backward through it, is a sequence of collectives, and all ranks must make
        the same ones."""
        if prefix_len is None:
            return engine(input_ids=ids, attention_mask=attn, use_cache=False,
                          **({} if pos is None else {"logits_to_keep": pos})).logits
        B, T = ids.shape
        P = prefix_len
        pos = torch.arange(T, device=ids.device) if pos is None else pos
        head, tail = pos[pos < P], pos[pos >= P] - P  # positions in the prefix, in the continuations
        one = torch.zeros(1, dtype=torch.long, device=ids.device)  # a position to keep when a part needs none
        if P == 0:  # nothing shared: a one-token stand-in, joined to the output with weight 0 so that its backward
            # runs too (ZeRO-3 gathers each layer again for every forward it went through)
            stand_in = engine(input_ids=ids[:1, :1], use_cache=False, logits_to_keep=one).logits
            rest = engine(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=pos).logits
            return rest + 0.0 * stand_in.sum()
        prefix = engine(input_ids=ids[:1, :P], use_cache=True, logits_to_keep=head if len(head) else one)
        cache = prefix.past_key_values
        cache.batch_repeat_interleave(B)
        rest = engine(input_ids=ids[:, P:], attention_mask=attn, past_key_values=cache, use_cache=True,
                      logits_to_keep=tail if len(tail) else one)
        # A part no position needs still joins with weight 0: its backward must run on this rank as on the others.
        if not len(head):
            return rest.logits + 0.0 * prefix.logits.sum()
        if not len(tail):
            return prefix.logits.expand(B, -1, -1) + 0.0 * rest.logits.sum()
        return torch.cat([prefix.logits.expand(B, -1, -1), rest.logits], dim=1)

    # ---- weights and checkpoints (all collective) ---------------------------------------------------------------

    def gather_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights on rank 0 (CPU copies, HF names), None elsewhere. named_parameters lists a tied weight
        once, under its first name, so a tied lm_head.weight is left out exactly as save_pretrained does."""
        module = self.hf_model(self.engine.module)
        params = list(module.parameters())
        with self._ds.zero.GatheredParameters(params, modifier_rank=None):
            if self.rank != 0:
                return None
            sd = {_hf_name(n): p.detach().to("cpu", copy=True) for n, p in module.named_parameters()}
        # Persistent buffers belong to a HF checkpoint too (ZeRO-3 does not partition buffers).
        for prefix, sub in module.named_modules():
            for n, b in sub.named_buffers(recurse=False):
                if b is not None and n not in sub._non_persistent_buffers_set:
                    sd[_hf_name(f"{prefix}.{n}" if prefix else n)] = b.detach().to("cpu", copy=True)
        return sd

    def join_weight_group(self, group) -> None:
        """Rank 0 joins the engines' weight group as its rank 0 (sync.transport = collective; weight_transport)."""
        from actors.weight_transport import open_group

        self._weight_pg = open_group(group, 0)

    def broadcast_weights(self, bucket_bytes: int) -> int:
        """Collective over the ranks (the ZeRO-3 gather): rank 0 then broadcasts the full weights to the engines'
        workers over the weight group. Returns the bytes sent (0 on the other ranks)."""
        from actors.weight_transport import send

        sd = self.gather_state_dict()
        return 0 if sd is None else send(self._weight_pg, sd, bucket_bytes)

    def save_checkpoint(self, path: str, client_state: dict) -> None:
        """Model + optimizer shards of every rank (path must be on a filesystem all ranks share) + client_state."""
        self.engine.save_checkpoint(path, client_state=dict(client_state or {}))

    def load_checkpoint(self, path: str) -> dict:
        load_path, client_state = self.engine.load_checkpoint(path)
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}")
        return client_state or {}

    def save_hf(self, path: str, extra_files: dict[str, str] | None = None) -> None:
        """A plain HF folder (weights + config + tokenizer files + extra_files {name: text}) written by rank 0."""
        sd = self.gather_state_dict()
        if self.rank != 0:
            return
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.hf_model(self.engine.module).save_pretrained(out, state_dict=sd)
        for name, text in (extra_files or {}).items():
            (out / name).write_text(text)
        for f in Path(self.settings.model_path).iterdir():  # tokenizer, chat template, ... (not weights/config)
            if f.is_file() and not f.name.endswith(_WEIGHT_FILES) and f.name not in {
                    "config.json", "generation_config.json", "model.safetensors.index.json"}:
                shutil.copy2(f, out / f.name)

    def stats(self) -> dict:
        return {"rank": self.rank, "rss_mb": _rss_mb(), "peak_rss_mb": _peak_rss_mb(),
                "threads": torch.get_num_threads(), "global_steps": self.engine.global_steps,
                "reference_model": self.ref is not None}


LearnerActor = ray.remote(LearnerRank)
"""Ray actor class; LearnerGroup sets its resources (settings.num_cpus on CPU, num_gpus=1 on GPU)."""


RENDEZVOUS_TRIES = 3  # group starts before giving up when rank 0's TCP store finds its port taken


def _port_was_taken(error: LearnerFailed) -> bool:
    """torch's TCP store could not listen: another process bound the port between its choice and the bind."""
    text = str(error).lower()
    return "eaddrinuse" in text or "address already in use" in text


class LearnerGroup:
    """Driver-side handle on num_ranks LearnerRank actors (one ZeRO-3 group)."""

    actor_class = LearnerActor  # subclasses run other LearnerRank subclasses on the same group machinery

    def __init__(self, settings: LearnerSettings, num_ranks: int = 2, use_gpu: bool | None = None,
                 placement_group=None, timeout_s: float | None = None, init_timeout_s: float = 900):
        """placement_group: bundles 0..num_ranks-1 hold the ranks (one each); without it the group reserves its own
        (PACK). timeout_s bounds every later call (None: wait forever)."""
        self.settings, self.num_ranks, self.timeout_s = settings, num_ranks, timeout_s
        if use_gpu is None:
            use_gpu = ray.cluster_resources().get("GPU", 0) > 0
        self.use_gpu = use_gpu
        cpus = 1 if use_gpu else settings.num_cpus
        bundle = {"CPU": cpus, "GPU": 1} if use_gpu else {"CPU": cpus}
        self._own_pg = placement_group is None
        self.pg = placement_group or _reserve(bundle, num_ranks, init_timeout_s)
        self.ranks = []
        try:
            for attempt in range(1, RENDEZVOUS_TRIES + 1):
                addr, self.master_port = self._rendezvous(init_timeout_s)
                for r in range(num_ranks):
                    self.ranks.append(self.actor_class.options(
                        num_cpus=cpus, num_gpus=1 if use_gpu else 0,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r),
                    ).remote(settings, r, num_ranks, addr, self.master_port, use_gpu))
                try:
                    self.info = self._wait_ready(init_timeout_s)
                    break
                except LearnerFailed as e:
                    if attempt == RENDEZVOUS_TRIES or not _port_was_taken(e):
                        raise
                    self._kill_ranks()  # and again on a fresh port, in the same placement group
        except BaseException:
            self.shutdown()
            raise

    def _rendezvous(self, timeout_s: float | None) -> tuple[str, int]:
        """Rank 0's node address and a port free there now (a test overrides it to hand out a taken port)."""
        return ray.get(rendezvous_address.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            self.pg, placement_group_bundle_index=0)).remote(), timeout=timeout_s)

    def _wait_ready(self, timeout_s: float) -> list[dict]:
        return self._collect([a.ready.remote() for a in self.ranks], timeout_s, "failed to start")

    @staticmethod
    def _collect(refs: list, timeout_s: float | None, what: str, first_rank: int = 0) -> list:
        """ray.get that reports the FIRST failing rank at once: when one rank dies (in __init__ or mid-step) the
        others block in a collective, so waiting on them in order would only end at the timeout."""
        pending = {ref: first_rank + i for i, ref in enumerate(refs)}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            if not done:
                raise LearnerFailed(f"learner ranks {sorted(pending.values())} did not answer within {timeout_s:.0f}s "
                                    "(a ZeRO-3 collective waiting on a lost rank?)")
            rank = pending.pop(done[0])
            try:
                ray.get(done[0])
            except Exception as e:
                raise LearnerFailed(f"learner rank {rank} {what}: {e}") from e
        return ray.get(refs)

    # ---- calls ----------------------------------------------------------------------------------------------

    def train_step(self, batch: TrainBatch | None, demo: TrainBatch | None = None) -> dict:
        """One optimizer step on the batch (plus, with `demo`, settings.demo_coef x the demonstrations' NLL per
        token). batch None: a step on that NLL alone, which is SFT (rl.sft) in one forward and backward per micro
        batch, where the policy loss at ratio 1 would need a logprobs pass first."""
        if batch is None and demo is None:
            raise ValueError("train_step needs a batch, demonstrations or both")
        if batch is not None and (batch.old_logprobs is None or batch.advantages is None):
            raise ValueError("train_step needs old_logprobs and advantages in the batch")
        shares = self._shares_with_totals(batch) if batch is not None else [None] * self.num_ranks
        demo_shares = self._shares_with_totals(demo) if demo is not None else [None] * self.num_ranks
        results = self._call("train_step", list(zip(shares, demo_shares)), spread=True)
        out = {k: sum(r[k] for r in results) / len(results) for k in results[0]}
        out["tokens"] = sum(r["tokens"] for r in results)
        out["seconds"] = max(r["seconds"] for r in results)
        for k in PHASES:  # the slowest rank's, as for the step
            out[k] = max(r[k] for r in results)
        return out

    def new_schedule(self, lr: float, steps: int) -> None:
        """A fresh optimizer state and warm-up/decay schedule over `steps` on every rank (LearnerRank.new_schedule)."""
        self._call("new_schedule", [(lr, steps)] * self.num_ranks, spread=True)

    def logprobs(self, batch: TrainBatch, reference: bool = False) -> list[list[float]]:
        shares, n = self._split(batch)
        return [row for share in self._call("logprobs", [(s, reference) for s in shares], spread=True)
                for row in share][:n]

    def state_dict_ref(self) -> ray.ObjectRef:
        """Rank 0's gathered weights as an ObjectRef: pass it to rollout workers; the driver never holds them."""
        refs = [a.gather_state_dict.remote() for a in self.ranks]
        # The other ranks return only once the collective is done, so waiting on them (errors named) and then on
        # rank 0 without fetching keeps the weights out of the driver.
        self._collect(refs[1:], self.timeout_s, "failed in gather_state_dict", first_rank=1)
        if not ray.wait(refs[:1], timeout=self.timeout_s, fetch_local=False)[0]:
            raise LearnerFailed(f"learner rank 0 did not finish gather_state_dict within {self.timeout_s}s")
        return refs[0]

    def weight_group_address(self) -> tuple[str, int]:
        """A free port on rank 0's node, for the weight group's store (rank 0 listens there)."""
        return self._rendezvous(self.timeout_s)

    def wait(self, refs: list, what: str) -> list:
        """The results of calls made on the ranks directly (broadcast_weights), with this group's timeout and
        failure handling (LearnerFailed naming the first rank that failed)."""
        return self._collect(refs, self.timeout_s, what)

    def join_weight_group(self, group) -> ray.ObjectRef:
        """Rank 0's join; it returns once every member of the group has joined (wait on it with theirs)."""
        return self.ranks[0].join_weight_group.remote(group)

    def broadcast_weights(self, bucket_bytes: int) -> list[ray.ObjectRef]:
        """Every rank's part of one broadcast (the engines must receive concurrently: wait on these with theirs)."""
        return [a.broadcast_weights.remote(bucket_bytes) for a in self.ranks]

    def save_checkpoint(self, path: str, client_state: dict | None = None) -> None:
        self._call("save_checkpoint", [(str(path), client_state or {})] * self.num_ranks, spread=True)

    def load_checkpoint(self, path: str) -> dict:
        return self._call("load_checkpoint", [(str(path),)] * self.num_ranks, spread=True)[0]

    def save_hf(self, path: str, extra_files: dict[str, str] | None = None) -> None:
        self._call("save_hf", [(str(path), extra_files)] * self.num_ranks, spread=True)

    def stats(self) -> list[dict]:
        return self._call("stats", [()] * self.num_ranks, spread=True)

    def _kill_ranks(self) -> None:
        for a in self.ranks:
            ray.kill(a)
        self.ranks = []

    def shutdown(self) -> None:
        self._kill_ranks()
        if self._own_pg and self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None

    def _call(self, method: str, args: list, spread: bool = False) -> list:
        refs = [getattr(a, method).remote(*(x if spread else (x,))) for a, x in zip(self.ranks, args)]
        # After a failure the other ranks may be stuck mid-collective: the group is unusable (shutdown + rebuild,
        # e.g. from the last checkpoint).
        return self._collect(refs, self.timeout_s, f"failed in {method}")

    def _shares_with_totals(self, batch: TrainBatch) -> list[TrainBatch]:
        """One share per rank, each told the whole batch's totals (every micro loss's weight depends on them)."""
        shares, _ = self._split(batch)
        totals = BatchTotals.of(batch.input_ids, batch.loss_mask)
        for share in shares:
            share.totals = totals
        return shares

    def _split(self, batch: TrainBatch) -> tuple[list[TrainBatch], int]:
        """Contiguous, equal-sized shares. The sequence count is padded up to a multiple of num_ranks with
        loss-free copies of the shortest sequence, so every rank gets the same number of sequences, hence the
        same number of micro batches (same micro_batch_size everywhere), hence the same sequence of ZeRO-3
        collectives: a rank with one micro step fewer would leave the others waiting forever. Returns the shares
        and the number of real sequences (the padding copies sit at the end)."""
        ids = batch.input_ids
        n = len(ids)
        if n == 0:
            raise ValueError("empty batch")
        per_rank = -(-n // self.num_ranks)
        short = ids[min(range(n), key=lambda i: len(ids[i]))]
        extra = per_rank * self.num_ranks - n

        def fill(rows: list | None) -> list | None:
            return None if rows is None else list(rows) + [[0] * len(short)] * extra

        padded = TrainBatch(list(ids) + [short] * extra, fill(batch.loss_mask), fill(batch.old_logprobs),
                            fill(batch.advantages), ref_logprobs=fill(batch.ref_logprobs),
                            behaviour_logprobs=fill(batch.behaviour_logprobs))
        return [padded.rows(slice(r * per_rank, (r + 1) * per_rank)) for r in range(self.num_ranks)], n


def shared_prefix_len(rows: list[list[int]], min_len: int = 16) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own; 0 when fewer than min_len
    (too short to be worth a second forward) or for a single row."""
    if len(rows) < 2:
        return 0
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n if n >= min_len else 0


def _reserve(bundle: dict, n: int, timeout_s: float):
    pg = placement_group([dict(bundle) for _ in range(n)], strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise TimeoutError(f"could not reserve {n} x {bundle} for the learner in {timeout_s:.0f}s "
                           f"(cluster has {ray.available_resources()})")
    return pg


def _hf_name(name: str) -> str:
    return name.removeprefix("module.")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
