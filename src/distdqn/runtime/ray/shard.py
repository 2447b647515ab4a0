"""A replay shard of the Ray runtime: :class:`ShardCore` (plain, testable without Ray) and
the asyncio Ray actor around it, :class:`ReplayShardRole`."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from distdqn.config import ExperimentConfig
from distdqn.core import Chunk
from distdqn.envs import EnvSpaces
from distdqn.program import build_replay
from distdqn.runtime.codec import batch_to_numpy
from distdqn.runtime.ledger import IngestStats, ingest_chunk
from distdqn.runtime.ray.common import incarnation, role_setup


class ShardCore:
    """One replay shard without Ray: the replay, insert de-duplication and accounting.

    Inserts are identified by ``(source, seq)`` where ``source = (actor_id, incarnation)``:
    a call that is retried after it already landed is answered ``"dup"`` and inserts
    nothing. Every chunk that is taken is accounted (:class:`IngestStats`: produced =
    inserted + rejected + dropped); after :meth:`stop`, chunks are counted as dropped.

    Args:
        cfg, spaces: the experiment.
        index, num_shards: which shard (capacity and ``min_replay_size`` are split evenly).
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, index: int = 0, num_shards: int = 1):
        self.replay = build_replay(cfg, spaces, shard=index, num_shards=num_shards)
        self.index = index
        self.last_seq: dict[tuple[int, int], int] = {}
        self.duplicates = 0
        self.stopping = False
        self._stats = IngestStats()

    def is_new(self, source: tuple[int, int], seq: int) -> bool:
        return seq > self.last_seq.get(tuple(source), -1)

    def can_insert(self, chunk: Chunk) -> bool:
        return self.stopping or self.replay.can_insert(len(chunk))

    def insert(self, source: tuple[int, int], seq: int, chunk: Chunk) -> str:
        """Take a chunk: ``"ok"``, ``"dup"`` (already taken) or ``"dropped"`` (stopping).
        Call only when :meth:`can_insert` (the rate limiter is not consulted here)."""
        source = (int(source[0]), int(source[1]))
        if not self.is_new(source, seq):
            self.duplicates += 1
            return "dup"
        self.last_seq[source] = int(seq)
        if self.stopping:
            self._stats.add(chunk, 0, 0, dropped=len(chunk))
            return "dropped"
        self._stats.add(chunk, *ingest_chunk(self.replay, chunk))
        return "ok"

    def sample(self, batch_size: int, priority_updates: list[tuple[np.ndarray, np.ndarray]] = (),
               count: int = 1, num_batches: int = 1) -> dict[str, Any]:
        """Apply the learner's pending ``(keys, td_abs)`` priority updates, then make up to
        ``count`` draws of ``num_batches`` batches each (``Replay.sample(batch_size,
        num_batches)``; fewer, maybe none, when the rate limiter or the fill level stops it).

        Returns ``{"batches": [dict of numpy arrays], "mass", "size", "beta"}`` (each draw as
        :func:`~distdqn.runtime.codec.batch_to_numpy` lays it out; ``beta`` the exponent of
        the first). Numpy, not torch, because Ray moves numpy arrays without pickling them
        one by one; several draws per call because each call costs Ray's overhead.
        """
        for keys, td_abs in priority_updates:
            self.replay.update_priorities(keys, td_abs)
        beta = self.replay.beta
        batches = []
        while len(batches) < count and self.replay.can_sample(batch_size * num_batches):
            batches.append(batch_to_numpy(self.replay.sample(batch_size, num_batches)))
        return {"batches": batches, "mass": self.mass(), "size": len(self.replay), "beta": beta}

    def mass(self) -> float:
        tree = getattr(self.replay, "tree", None)
        return float(tree.total()) if tree is not None else float(len(self.replay))

    def drain_stats(self) -> dict[str, Any]:
        """Accounting since the last call, plus the shard's gauges."""
        s, self._stats = self._stats, IngestStats()
        return {"ingest": s, "size": len(self.replay), "nbytes": self.replay.nbytes, "samples": self.replay.samples,
                "inserted": self.replay.inserted, "beta": self.replay.beta, "duplicates": self.duplicates}


class ReplayShardRole:
    """Ray actor around :class:`ShardCore` (asyncio: waiting inserts do not block samples)."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, index: int, num_shards: int):
        role_setup(1)
        self.core = ShardCore(cfg, spaces, index, num_shards)
        self.incarnation = incarnation()
        self._room: asyncio.Condition | None = None

    def _cond(self) -> asyncio.Condition:
        if self._room is None:
            self._room = asyncio.Condition()
        return self._room

    async def insert(self, source: tuple[int, int], seq: int, chunk: Chunk) -> str:
        if not self.core.is_new(source, seq):
            return self.core.insert(source, seq, chunk)
        cond = self._cond()
        async with cond:
            await cond.wait_for(lambda: self.core.can_insert(chunk))
            return self.core.insert(source, seq, chunk)

    async def sample(self, batch_size: int, priority_updates: list[tuple[np.ndarray, np.ndarray]] = (),
                     count: int = 1, num_batches: int = 1) -> dict[str, Any]:
        out = self.core.sample(batch_size, priority_updates, count, num_batches)
        cond = self._cond()
        async with cond:  # a sample (or a refused one: the limiter's deadlock breaker) may make room
            cond.notify_all()
        return out

    async def update_priorities(self, updates: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for keys, td_abs in updates:
            self.core.replay.update_priorities(keys, td_abs)

    async def stats(self) -> dict[str, Any]:
        return dict(self.core.drain_stats(), incarnation=self.incarnation)

    async def state_dict(self) -> dict[str, Any]:
        return self.core.replay.state_dict()

    async def load_state_dict(self, state: dict[str, Any]) -> None:
        self.core.replay.load_state_dict(state)

    async def stop(self) -> None:
        self.core.stopping = True
        cond = self._cond()
        async with cond:
            cond.notify_all()
