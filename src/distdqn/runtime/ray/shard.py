"""A replay shard of the Ray runtime: :class:`ShardCore` (plain, testable without Ray), the
role around it that Ray threads call (:class:`ReplayShardRole`), and the port through which
a learner hosted in the same process draws from it (:class:`LocalShardPort`)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from distdqn.config import ExperimentConfig, replace
from distdqn.core import Batch, Chunk
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
        # On Ray the shards are the pools (a3c: one per worker): each shard is one replay.
        central = replace(cfg, **{"replay.placement": "central"}) if cfg.replay.placement != "central" else cfg
        self.replay = build_replay(central, spaces, shard=index, num_shards=num_shards)
        self.index = index
        self.last_seq: dict[tuple[int, int], int] = {}
        self.duplicates = 0
        self.stopping = False
        self.draining = False
        """A graceful stop: inserts pass the rate limiter (what is in flight is kept)."""
        self._stats = IngestStats()

    def is_new(self, source: tuple[int, int], seq: int) -> bool:
        return seq > self.last_seq.get(tuple(source), -1)

    def can_insert(self, chunk: Chunk) -> bool:
        return self.stopping or self.draining or self.replay.can_insert(len(chunk))

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
    """A replay shard many threads may call (a :class:`RoleHost` is a threaded Ray actor):
    :class:`ShardCore` under one lock. An insert the rate limiter refuses waits (its calling
    thread) until a sample made room, so the actor's call returns late: that is the
    back-pressure that keeps ``samples_per_insert``. A learner in the same process draws
    through :class:`LocalShardPort`, without Ray."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, index: int, num_shards: int):
        role_setup(1)
        self.core = ShardCore(cfg, spaces, index, num_shards)
        self.incarnation = incarnation()
        self.room = threading.Condition()

    def insert(self, source: tuple[int, int], seq: int, chunk: Chunk) -> str:
        with self.room:
            if self.core.is_new(source, seq):
                self.room.wait_for(lambda: self.core.can_insert(chunk))
            out = self.core.insert(source, seq, chunk)
            self.room.notify_all()  # a learner waiting for data
            return out

    def sample(self, batch_size: int, priority_updates: list[tuple[np.ndarray, np.ndarray]] = (),
               count: int = 1, num_batches: int = 1) -> dict[str, Any]:
        with self.room:
            out = self.core.sample(batch_size, priority_updates, count, num_batches)
            self.room.notify_all()  # a sample (or a refused one: the limiter's deadlock breaker) may make room
        return out

    def update_priorities(self, updates: list[tuple[np.ndarray, np.ndarray]]) -> None:
        with self.room:
            for keys, td_abs in updates:
                self.core.replay.update_priorities(keys, td_abs)

    def stats(self) -> dict[str, Any]:
        with self.room:
            return dict(self.core.drain_stats(), incarnation=self.incarnation)

    def state_dict(self) -> dict[str, Any]:
        with self.room:
            return self.core.replay.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self.room:
            self.core.replay.load_state_dict(state)

    def drain(self) -> None:
        """A graceful stop begins: inserts waiting for the rate limiter, and those still on
        their way, are taken at once (and kept) until :meth:`stop`."""
        with self.room:
            self.core.draining = True
            self.room.notify_all()

    def stop(self) -> None:
        with self.room:
            self.core.stopping = True
            self.room.notify_all()


class LocalShardPort:
    """The replay port of a learner in the same process as its shard: draws under the
    shard's lock, no Ray call. When the rate limiter refuses a draw it waits (briefly) for
    an insert."""

    def __init__(self, shard: ReplayShardRole):
        self.shard = shard

    def can_sample(self, batch_size: int) -> bool:
        s = self.shard
        with s.room:
            if s.core.replay.can_sample(batch_size):
                return True
            s.room.wait(0.005)
            return s.core.replay.can_sample(batch_size)

    def sample(self, batch_size: int, num_batches: int = 1) -> Batch:
        s = self.shard
        with s.room:
            batch = s.core.replay.sample(batch_size, num_batches)
            s.room.notify_all()
        return batch

    def update_priorities(self, keys: np.ndarray, td_abs: np.ndarray) -> None:
        with self.shard.room:
            self.shard.core.replay.update_priorities(keys, td_abs)
