"""Helpers shared by the test modules."""

from __future__ import annotations

import copy
import io
from typing import Any

import torch

from distdqn.config import ExperimentConfig, from_dict


def config_with(base: dict[str, Any], **dotted: Any) -> ExperimentConfig:
    """``base`` (nested config data) with ``section.key=value`` changes, validated."""
    data = copy.deepcopy(base)
    for key, value in dotted.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return from_dict(data)


def torch_roundtrip(obj: Any) -> Any:
    """``obj`` saved with ``torch.save`` and loaded back with ``weights_only=True`` (what a
    checkpoint goes through)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def dqn_replay(config, batch_size, obs_shape, obs_dtype, seed, frame_capacity=None):
    """A replay of DQN transitions of ``obs_shape`` observations (frame-stack fields when
    ``config.frame_dedup == "on"``), as the agent's spec would build it."""
    from distdqn.agents.dqn.spec import transition_spec
    from distdqn.replay import make_replay

    spec = transition_spec(obs_shape, obs_dtype, frame_dedup=config.frame_dedup == "on")
    return make_replay(config, batch_size, spec, seed, frame_capacity)


def dqn_ring_storage(capacity, obs_shape, obs_dtype):
    """A ring storage of DQN transitions of ``obs_shape`` observations."""
    from distdqn.agents.dqn.spec import transition_spec
    from distdqn.replay import RingStorage

    return RingStorage(capacity, transition_spec(obs_shape, obs_dtype))


def dqn_frame_storage(capacity, obs_shape, obs_dtype, frame_capacity=None):
    """A frame storage of DQN transitions whose observations are ``obs_shape`` frame stacks."""
    from distdqn.agents.dqn.spec import transition_spec
    from distdqn.replay import FrameStorage

    return FrameStorage(capacity, transition_spec(obs_shape, obs_dtype, frame_dedup=True), frame_capacity)


def flush(actor):
    """Whatever transitions the actor has pending, staged ones completed with one forward pass
    over its current observations, as a chunk (or None): what a chunk made at this step would
    hold."""
    import numpy as np
    import torch

    if actor.spec.compute_priorities and actor.adder.num_staged:
        with torch.inference_mode():
            v = actor.policy.policy(torch.from_numpy(actor._obs)).max(dim=1).values.numpy()
        actor.adder.resolve(np.asarray(v))
    return actor._make_chunk()


def children(pid: int) -> set[int]:
    """The child processes of ``pid`` (``distdqn.bench.soak.children``, as a set)."""
    from distdqn.bench.soak import children as soak_children

    return set(soak_children(pid))


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (not ``pid`` itself)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children(todo.pop()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out

def listening_sockets(pids) -> list[tuple[str, int, int]]:
    """``(address, port, pid)`` of every TCP socket in LISTEN state that one of ``pids``
    holds (from ``/proc/<pid>/fd`` and ``/proc/net/tcp{,6}``; Linux)."""
    import ipaddress
    import os

    owner: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            rows = f.read().splitlines()[1:]
        for row in rows:
            fields = row.split()
            if fields[3] != "0A" or fields[9] not in owner:  # 0A: TCP_LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # per-word byte order
            out.append((str(ipaddress.ip_address(raw)), int(hex_port, 16), owner[fields[9]]))
    return out
