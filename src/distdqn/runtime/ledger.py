"""The run's counters and its transition accounting, ``produced = inserted + rejected +
dropped``, kept wherever chunks reach a replay (the driver's process, or a Ray replay shard)
and added up in the driver."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distdqn.core import Chunk, finite_mask

log = logging.getLogger(__name__)


@dataclass
class Counters:
    """Run counters, checkpointed and restored on resume."""

    env_steps: int = 0
    produced: int = 0
    inserted: int = 0
    rejected: int = 0
    dropped: int = 0
    episodes: int = 0
    actor_restarts: int = 0
    learner_restarts: int = 0
    replay_restarts: int = 0
    parameter_server_restarts: int = 0
    env_restarts: int = 0
    checkpoint_failures: int = 0
    """Checkpoints that could not be written (e.g. disk full); the last good one stays."""
    next_eval_at: int = 0
    evals: int = 0
    wall_time: float = 0.0
    """Seconds of training across all sessions of this run (resumes add up)."""
    solved_at_env_steps: int = -1
    solved_at_wall_time: float = -1.0
    last_eval_return: float = float("nan")
    last_eval_returns: list[float] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def accounting_ok(self) -> bool:
        return self.produced == self.inserted + self.rejected + self.dropped


@dataclass
class IngestStats:
    """Bookkeeping of the chunks that reached a replay, to be added to the run's counters
    (:meth:`Ledger.account`). ``produced = inserted + rejected + dropped``."""

    produced: int = 0
    inserted: int = 0
    rejected: int = 0
    dropped: int = 0
    env_steps: int = 0
    env_restarts: int = 0
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    param_versions: list[int] = field(default_factory=list)
    epsilons: dict[int, float] = field(default_factory=dict)
    """The newest exploration rate each actor reported (actor id -> epsilon)."""
    stats: dict[str, float] = field(default_factory=dict)
    """The newest producer metrics (:attr:`Chunk.stats`)."""

    def add(self, chunk: Chunk, inserted: int, rejected: int, dropped: int = 0) -> None:
        """Count one chunk whose items were inserted, rejected (non-finite) or dropped (here,
        or by its producer: :attr:`Chunk.dropped`)."""
        self.produced += len(chunk) + chunk.dropped
        self.inserted += inserted
        self.rejected += rejected
        self.dropped += dropped + chunk.dropped
        if chunk.stats:
            self.stats.update(chunk.stats)
        self.env_steps += chunk.env_steps
        self.env_restarts += chunk.env_restarts
        self.episode_returns.extend(float(r) for r in chunk.episode_returns)
        self.episode_lengths.extend(int(n) for n in chunk.episode_lengths)
        if chunk.param_version >= 0:
            self.param_versions.append(int(chunk.param_version))
        if chunk.epsilon is not None:
            self.epsilons[int(chunk.actor_id)] = float(chunk.epsilon)


def ingest_chunk(replay: Any, chunk: Chunk) -> tuple[int, int]:
    """Refuse a chunk's non-finite items and insert the rest into ``replay``.

    Returns ``(inserted, rejected)`` item counts. A compact (frame-deduplicated) chunk's
    frames are inserted even when none of its items survived: later items of the same
    episode refer to them.
    """
    n = len(chunk)
    bad = 0
    if n:
        ok = finite_mask(chunk)
        bad = int(n - ok.sum())
        if bad:
            log.debug("actor %d: rejected %d non-finite transitions", chunk.actor_id, bad)
            chunk = chunk.select(ok)  # a compact chunk keeps all its frames
    if len(chunk) or chunk.frames is not None:
        replay.insert(chunk)
    return len(chunk), bad


class Ledger:
    """The run's :class:`Counters` plus the recent figures the metrics rows report.

    Args:
        counters: the (restored) counters.
    """

    def __init__(self, counters: Counters):
        self.c = counters
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.recent_lengths: deque[int] = deque(maxlen=20)
        self.param_lag: deque[int] = deque(maxlen=100)
        self.epsilons: dict[int, float] = {}
        self.stats: dict[str, float] = {}
        """The newest producer metrics (metrics-row columns)."""

    def account(self, s: IngestStats, param_version: int) -> None:
        """Add chunk bookkeeping done here or elsewhere (a Ray replay shard); ``param_version``
        is the parameter server's now (for ``param_lag``)."""
        c = self.c
        c.produced += s.produced
        c.inserted += s.inserted
        c.rejected += s.rejected
        c.dropped += s.dropped
        c.env_steps += s.env_steps
        c.env_restarts += s.env_restarts
        c.episodes += len(s.episode_returns)
        self.recent_returns.extend(s.episode_returns)
        self.recent_lengths.extend(s.episode_lengths)
        self.param_lag.extend(param_version - v for v in s.param_versions)
        self.epsilons.update(s.epsilons)
        self.stats.update(s.stats)

    def ingest(self, replay: Any, chunk: Chunk, param_version: int) -> None:
        """Account for a chunk, refuse non-finite items, insert the rest."""
        stats = IngestStats()
        stats.add(chunk, *ingest_chunk(replay, chunk))
        self.account(stats, param_version)

    def drop(self, n: int) -> None:
        """Count items that were produced but never inserted (e.g. left in a queue at an abrupt stop)."""
        self.c.produced += n
        self.c.dropped += n

    def epsilon(self) -> float | None:
        """The mean exploration rate the actors reported last (None before any chunk)."""
        return float(np.mean(list(self.epsilons.values()))) if self.epsilons else None
