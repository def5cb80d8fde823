"""Where a torch.distributed group meets: rank 0's node address and a free port there.

Its own module, without torch: the task that asks rank 0's node runs in a fresh Ray worker before the ranks can
start, and a worker imports the module that defines the function it runs (actors/learner.py imports torch: ~3 s
of CPU and of the learner's start-up on the 2-core machine, for an address and a port).
"""
from __future__ import annotations

import random
import socket
from pathlib import Path

import ray


def free_port_outside_ephemeral_range() -> int:
    """A port free now, chosen below the kernel's ephemeral range (and above Ray's worker ports, 10002-19999) when
    there is room: the TCP store binds it only after rank 0 has imported DeepSpeed, seconds later, and in between
    every outgoing connection and every bind(0) on the node (vLLM, Ray, another run's learner) draws from the
    ephemeral range. Outside it, only another explicit choice can collide, and LearnerGroup retries those."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: let the kernel pick
        low = 0
    candidates = random.sample(range(20000, low), min(20, low - 20000)) if low > 20000 else []
    for port in candidates + [0]:
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port for the learner's rendezvous")


@ray.remote(num_cpus=0)
def rendezvous_address() -> tuple[str, int]:
    """Run it in rank 0's bundle: torch.distributed's TCP store listens on rank 0's node, so the address and the
    free port must both be that node's."""
    return ray.util.get_node_ip_address(), free_port_outside_ephemeral_range()
