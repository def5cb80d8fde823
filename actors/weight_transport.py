"""Weight sync over a process group (sync.transport = collective): learner rank 0 broadcasts, every engine receives.

The object-store path (actors/weight_sync.py) serialises the whole state dict through Ray. This one sends it the
way OpenRLHF and veRL do on GPU clusters: a torch.distributed group of its own between learner rank 0 (rank 0 of
the group) and each vLLM worker (ranks 1..N), gloo on CPU and NCCL on GPU, the same code for both. The group is
built from a TCPStore, outside torch.distributed's global state, so it lives beside DeepSpeed's world in the
learner and beside vLLM's in the engine.

One sync: rank 0 broadcasts a header (the bucket size and every tensor's name, shape and dtype), then the tensors in
buckets of about `bucket_bytes`, each one flat buffer of one dtype; the receivers rebuild the named tensors and the
engine reloads them as it reloads the object store's.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

Meta = tuple[str, tuple[int, ...], str]  # name, shape, dtype name ("float32")


@dataclass(frozen=True)
class WeightGroup:
    """Where and how the group meets (plain data: it travels to the learner and to the engines' workers)."""

    host: str  # learner rank 0's node: its TCPStore listens there
    port: int
    world_size: int  # 1 + the engines' workers
    backend: str = "gloo"  # nccl on GPU
    timeout_s: float = 3600.0


def open_group(group: WeightGroup, rank: int):
    """This process's member of the group; every member must call it (each blocks until all have joined)."""
    timeout = timedelta(seconds=group.timeout_s)
    store = dist.TCPStore(group.host, group.port, group.world_size, is_master=rank == 0, timeout=timeout)
    if group.backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, group.world_size)
    return dist.ProcessGroupGloo(store, rank, group.world_size, timeout)


def _device(pg) -> str:
    return "cuda" if isinstance(pg, getattr(dist, "ProcessGroupNCCL", ())) else "cpu"


def _broadcast(pg, tensor: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    pg.broadcast([tensor], opts).wait()


def buckets(metas: list[Meta], bucket_bytes: int) -> list[list[Meta]]:
    """Consecutive tensors of one dtype, up to bucket_bytes each (a larger tensor is a bucket of its own)."""
    out: list[list[Meta]] = []
    size = 0
    for meta in metas:
        nbytes = _numel(meta[1]) * _dtype(meta[2]).itemsize
        if not out or out[-1][0][2] != meta[2] or size + nbytes > bucket_bytes:
            out.append([])
            size = 0
        out[-1].append(meta)
        size += nbytes
    return out


def send(pg, state_dict: dict[str, torch.Tensor], bucket_bytes: int) -> int:
    """Rank 0: the header, then every bucket. Returns the tensor bytes sent."""
    device = _device(pg)
    metas = [(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in state_dict.items()]
    header = pickle.dumps((bucket_bytes, metas))
    _broadcast(pg, torch.tensor([len(header)], dtype=torch.int64, device=device))
    _broadcast(pg, torch.frombuffer(bytearray(header), dtype=torch.uint8).to(device))
    sent = 0
    for bucket in buckets(metas, bucket_bytes):
        flat = torch.cat([state_dict[name].detach().reshape(-1).to(device) for name, _, _ in bucket])
        _broadcast(pg, flat)
        sent += flat.numel() * flat.element_size()
    return sent


def receive(pg) -> dict[str, torch.Tensor]:
    """Ranks 1..N: the named tensors rank 0 sent (on the group's device)."""
    device = _device(pg)
    length = torch.zeros(1, dtype=torch.int64, device=device)
    _broadcast(pg, length)
    raw = torch.empty(int(length.item()), dtype=torch.uint8, device=device)
    _broadcast(pg, raw)
    bucket_bytes, metas = pickle.loads(raw.cpu().numpy().tobytes())
    out = {}
    for bucket in buckets(metas, bucket_bytes):
        flat = torch.empty(sum(_numel(shape) for _, shape, _ in bucket), dtype=_dtype(bucket[0][2]), device=device)
        _broadcast(pg, flat)
        offset = 0
        for name, shape, _ in bucket:
            n = _numel(shape)
            out[name] = flat[offset:offset + n].view(shape)
            offset += n
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)
