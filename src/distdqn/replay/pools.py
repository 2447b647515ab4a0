"""Several experience pools behind one replay interface (``replay.placement: per_actor``).

Each actor's transitions go to its own pool (the classic parameter-server design where
every agent keeps its own experience memory, Nair et al. 2015, sec. 4 "bundled" mode);
learners sample from every pool in proportion to its size, so the mixture matches a
single uniform pool over all transitions. Each pool is a :class:`~distdqn.replay.Replay`
(uniform or prioritized within the pool); one shared rate limiter paces the whole.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from distdqn.config import ReplayConfig
from distdqn.core import Batch, Chunk, ItemSpec
from distdqn.replay.rate_limiter import RateLimiter
from distdqn.replay.replay import Replay, make_replay
from distdqn.replay.samplers import plain

POOL_SHIFT = 48
"""Keys are ``pool << POOL_SHIFT | key_in_pool``."""


class ReplayPools:
    """``num_pools`` replays with capacity ``config.capacity // num_pools`` each.

    Chunks from actor ``i`` go to pool ``i % num_pools``. A batch of B takes ``n_p`` items
    from pool p with ``(n_p) ~ Multinomial(B, size_p / sum size)``; importance weights
    are computed within each pool (prioritized pools) and used as they are.

    Args mirror :func:`~distdqn.replay.make_replay`, plus ``num_pools``.
    """

    def __init__(self, config: ReplayConfig, batch_size: int, spec: ItemSpec, seed: int, num_pools: int):
        if num_pools < 1:
            raise ValueError(f"num_pools must be >= 1, got {num_pools}")
        pool_cfg = dataclasses.replace(config, capacity=max(1, config.capacity // num_pools),
                                       samples_per_insert=0.0, min_replay_size=1, error_buffer=None)
        seeds = np.random.SeedSequence(seed).generate_state(num_pools + 1)
        self.pools: list[Replay] = [make_replay(pool_cfg, 1, spec, int(s)) for s in seeds[:num_pools]]
        buf = config.error_buffer if config.error_buffer is not None else 4.0 * max(config.samples_per_insert, batch_size)
        self.rate_limiter = RateLimiter(config.samples_per_insert, config.min_replay_size, float(buf), batch_size)
        self._rng = np.random.default_rng(int(seeds[-1]))

    def __len__(self) -> int:
        return sum(len(p) for p in self.pools)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pools)

    @property
    def inserted(self) -> int:
        return sum(p.inserted for p in self.pools)

    @property
    def samples(self) -> int:
        return self.rate_limiter.samples

    @property
    def beta(self) -> float:
        return self.pools[0].beta

    def can_insert(self, n: int) -> bool:
        """The shared rate limiter, and every pool's own room (FIFO pools: a full queue
        pauses all actors until its reader catches up)."""
        return self.rate_limiter.can_insert(n, len(self)) and all(p.can_insert(n) for p in self.pools)

    def can_sample(self, batch_size: int, pool: int | None = None) -> bool:
        """Whether a batch can be drawn across the pools, or from pool ``pool`` alone (A3C:
        each worker's learner reads its own actor's pool)."""
        if pool is not None:
            return self.pools[pool].can_sample(batch_size) and self.rate_limiter.can_sample(batch_size, len(self))
        return len(self) >= batch_size and self.rate_limiter.can_sample(batch_size, len(self))

    def insert(self, chunk: Chunk) -> np.ndarray:
        pool = chunk.actor_id % len(self.pools)
        keys = self.pools[pool].insert(chunk)
        self.rate_limiter.on_insert(len(chunk))
        return (np.int64(pool) << POOL_SHIFT) | keys

    def sample(self, batch_size: int, num_batches: int = 1, pool: int | None = None) -> Batch:
        """``num_batches`` batches of ``batch_size`` transitions, each drawn across pools in
        proportion to their sizes, laid out batch after batch (as :meth:`Replay.sample`); or
        one batch from pool ``pool`` alone.

        Raises:
            ValueError: fewer than ``batch_size`` transitions stored in all (or in ``pool``),
                or ``num_batches < 1``.
        """
        k = int(num_batches)
        if k < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        if pool is not None:
            b = self.pools[pool].sample(batch_size, k)
            b.keys = (np.int64(pool) << POOL_SHIFT) | b.keys
            self.rate_limiter.on_sample(batch_size * k)
            return b
        return self._sample_one(batch_size) if k == 1 else _concat([self._sample_one(batch_size) for _ in range(k)])

    def _sample_one(self, batch_size: int) -> Batch:
        sizes = np.array([len(p) for p in self.pools], dtype=np.int64)
        if sizes.sum() < batch_size:
            raise ValueError(f"cannot sample a batch of {batch_size}: pools hold only {sizes.sum()} transitions")
        counts = self._rng.multinomial(batch_size, sizes / sizes.sum())
        parts = []
        for p, n in enumerate(counts):
            if n:
                b = self.pools[p].sample(int(n))
                b.keys = (np.int64(p) << POOL_SHIFT) | b.keys
                parts.append(b)
        self.rate_limiter.on_sample(batch_size)
        return parts[0] if len(parts) == 1 else _concat(parts)

    def update_priorities(self, keys: np.ndarray, td_abs: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        td_abs = np.asarray(td_abs)
        pool_of = keys >> POOL_SHIFT
        local = keys & ((np.int64(1) << POOL_SHIFT) - 1)
        for p in np.unique(pool_of):
            m = pool_of == p
            self.pools[int(p)].update_priorities(local[m], td_abs[m])

    def state_dict(self) -> dict[str, Any]:
        return {"pools": [p.state_dict() for p in self.pools], "rate_limiter": self.rate_limiter.state_dict(),
                "rng": plain(self._rng.bit_generator.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p, s in zip(self.pools, state["pools"]):
            p.load_state_dict(s)
        self.rate_limiter.load_state_dict(state["rate_limiter"])
        self._rng.bit_generator.state = state["rng"]


def _concat(parts: list[Batch]) -> Batch:
    """Rows of ``parts`` one after another (per-pool sampling probabilities are dropped)."""
    return Batch(data={name: torch.cat([b.data[name] for b in parts]) for name in parts[0].data},
                 keys=np.concatenate([b.keys for b in parts]), weights=torch.cat([b.weights for b in parts]))
