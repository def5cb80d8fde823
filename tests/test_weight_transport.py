"""sync.transport = collective: the broadcast protocol over a real gloo group (three members, one per thread)."""
import socket
import threading

import torch

from actors.weight_transport import WeightGroup, buckets, open_group, receive, send


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_buckets_split_by_size_and_dtype():
    metas = [("a", (4,), "float32"), ("b", (2, 2), "float32"), ("c", (3,), "bfloat16"), ("d", (100,), "float32"),
             ("e", (1,), "float32")]
    # 32 bytes: a (16) + b (16) fill one; c changes dtype; d (400) is larger than a bucket, alone; e follows it
    assert [[m[0] for m in b] for b in buckets(metas, 32)] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert [[m[0] for m in b] for b in buckets(metas, 1 << 20)] == [["a", "b"], ["c"], ["d", "e"]]


def test_rank0_broadcast_reaches_every_member_exactly():
    torch.manual_seed(0)
    weights = {"model.embed_tokens.weight": torch.randn(50, 8), "model.norm.weight": torch.rand(8),
               "model.layers.0.mlp.up_proj.weight": torch.randn(16, 8).to(torch.bfloat16),
               "model.layers.0.self_attn.q_proj.bias": torch.randn(8)}
    group = WeightGroup("127.0.0.1", _free_port(), world_size=3, timeout_s=60)
    got, errors = {}, []

    def member(rank: int) -> None:
        try:
            pg = open_group(group, rank)
            for _ in range(2):  # the same group serves sync after sync
                if rank == 0:
                    got[0] = send(pg, weights, bucket_bytes=1024)
                else:
                    got[rank] = receive(pg)
        except Exception as e:  # noqa: BLE001 - reported below, a thread's exception would be lost
            errors.append(e)

    threads = [threading.Thread(target=member, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert got[0] == sum(t.numel() * t.element_size() for t in weights.values())
    for rank in (1, 2):
        assert list(got[rank]) == list(weights)
        for name, tensor in weights.items():
            assert got[rank][name].dtype == tensor.dtype and torch.equal(got[rank][name], tensor), name
