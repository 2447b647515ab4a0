"""Samplers: which stored items a batch takes, and their importance weights.

- :class:`UniformSampler`: slots uniform over the stored items, with replacement, weights 1.
- :class:`PrioritizedSampler`: proportional prioritization (Schaul, Quan, Antonoglou &
  Silver 2016, *Prioritized Experience Replay*): p_i = (|delta_i| + epsilon)^alpha,
  P(i) = p_i / sum_k p_k (eq. 1, the exponent folded into the stored priority), stratified
  sampling over a sum tree (App. B.2.1), importance weights w_i = (N * P(i))^-beta normalized
  by their maximum (sec. 3.4), beta annealed linearly to 1. New items get the maximum
  priority seen so far (Alg. 1) or, as in Ape-X (Horgan et al. 2018, sec. 3), the priority
  the actor computed.
- :class:`FifoSampler`: a queue: each item is read once, oldest first, and no item is
  overwritten before it was read (IMPALA's trajectory queue, Espeholt et al. 2018).

Each sampler owns its random generator; the :class:`~distdqn.replay.replay.Replay` front
calls ``on_insert`` after the storage took a chunk and ``draw`` to pick slots.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from distdqn.config import ReplayConfig
from distdqn.replay.sum_tree import SumTree


def plain(value: Any) -> Any:
    """Nested dicts/lists of numpy scalars -> the same with Python str/int/float (a generator
    state that survives ``torch.load(weights_only=True)``)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


class Storage(Protocol):
    capacity: int
    inserted: int
    filled: int

    def __len__(self) -> int: ...

    def sample_uniform(self, rng: np.random.Generator, batch_size: int) -> np.ndarray: ...

    def is_live(self, keys: np.ndarray) -> np.ndarray: ...

    def keys_of(self, slots: np.ndarray) -> np.ndarray: ...


class UniformSampler:
    """Uniform sampling with replacement; priorities are ignored (beyond validation)."""

    tree: SumTree | None = None
    max_priority = 1.0
    beta = 1.0

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.sample_calls = 0

    def can_sample(self, storage: Storage, n: int) -> bool:
        return len(storage) >= n

    def can_insert(self, storage: Storage, n: int) -> bool:
        return True

    def on_insert(self, storage: Storage, keys: np.ndarray, priority: np.ndarray | None) -> None:
        pass

    def on_killed(self, slots: np.ndarray) -> None:
        pass

    def draw(self, storage: Storage, batch_size: int, num_batches: int) -> tuple[np.ndarray, np.ndarray, None]:
        """``(slots, weights, None)``: ``batch_size * num_batches`` uniform slots, weights 1."""
        m = batch_size * num_batches
        slots = storage.sample_uniform(self.rng, m)
        self.sample_calls += num_batches
        return slots, np.ones(m, dtype=np.float32), None

    def update(self, storage: Storage, keys: np.ndarray, priority: np.ndarray) -> None:
        pass

    def state_dict(self, storage: Storage) -> dict[str, Any]:
        return {"priorities": None, "max_priority": 1.0, "rng": plain(self.rng.bit_generator.state),
                "sample_calls": self.sample_calls}

    def load_state_dict(self, state: dict[str, Any], storage: Storage) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.sample_calls = int(state["sample_calls"])


class PrioritizedSampler(UniformSampler):
    """Proportional prioritized sampling over a sum tree (see the module docstring).

    Args:
        config: ``priority_exponent`` (alpha), ``priority_epsilon``, ``importance_sampling_exponent``
            (beta at the start), ``beta_anneal_updates``, ``initial_priority``.
        capacity: the storage's slots (one leaf each).
        seed: seed of the sampler's generator.
    """

    def __init__(self, config: ReplayConfig, capacity: int, seed: int):
        super().__init__(seed)
        self.tree: SumTree = SumTree(capacity)
        self.alpha, self.eps = float(config.priority_exponent), float(config.priority_epsilon)
        self.beta0, self.beta_steps = float(config.importance_sampling_exponent), max(1, int(config.beta_anneal_updates))
        self.use_actor_priority = config.initial_priority == "actor"
        self.max_priority = 1.0

    @property
    def beta(self) -> float:
        """The IS exponent the next draw uses: linear from ``importance_sampling_exponent`` to 1
        over ``beta_anneal_updates`` batches."""
        frac = min(1.0, self.sample_calls / self.beta_steps)
        return self.beta0 + (1.0 - self.beta0) * frac

    def priority(self, td_abs: np.ndarray, what: str) -> np.ndarray:
        """``(|td| + epsilon)^alpha`` as float64; raises ValueError on NaN/inf."""
        td = np.asarray(td_abs, dtype=np.float64).reshape(-1)
        if not np.isfinite(td).all():
            bad = int(np.count_nonzero(~np.isfinite(td)))
            raise ValueError(f"{what}: {bad} of {td.shape[0]} values are NaN or inf")
        return np.power(np.abs(td) + self.eps, self.alpha)

    def initial(self, priority: np.ndarray | None, t: int) -> np.ndarray | None:
        """The stored priorities of T new items from the actor's (validated before the
        storage takes the chunk), or None for the max priority."""
        if not self.use_actor_priority or priority is None:
            return None
        if np.shape(priority) != (t,):
            raise ValueError(f"chunk.priority has shape {np.shape(priority)}, expected ({t},)")
        return self.priority(priority, "chunk.priority")

    def on_insert(self, storage: Storage, keys: np.ndarray, priority: np.ndarray | None) -> None:
        t = keys.shape[0]
        if t == 0:
            return
        if priority is None:
            priority = np.full(t, self.max_priority, dtype=np.float64)
        else:
            self.max_priority = max(self.max_priority, float(priority.max()))
        # Duplicate slots (T > capacity): the tree keeps the last write, like the storage.
        self.tree.update(keys % storage.capacity, priority)

    def on_killed(self, slots: np.ndarray) -> None:
        if slots.size:
            self.tree.update(slots, np.zeros(slots.size))

    def draw(self, storage: Storage, batch_size: int, num_batches: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stratified proportional draw: [0, total) split into ``M = batch_size * num_batches``
        equal segments, one uniform draw each (App. B.2.1); batch ``j`` takes segments ``j,
        j + num_batches, ...`` so each batch is stratified over the whole mass. Weights
        ``(N P(i))^-beta`` normalized per batch (one ``beta`` for all batches of a call).
        Returns ``(slots, weights, probs)``."""
        b, k = batch_size, num_batches
        m, n = b * k, len(storage)
        total = self.tree.total()
        u = (np.arange(m, dtype=np.float64) + self.rng.random(m)) * (total / m)
        if k > 1:  # row r of batch j: segment j + k*r
            u = u.reshape(b, k).T.reshape(-1)
        slots = self.tree.find_prefix_sum(u)
        probs = self.tree[slots] / total
        w = np.power(n * probs, -self.beta).reshape(k, b)
        weights = (w / w.max(axis=1, keepdims=True)).astype(np.float32).reshape(-1)
        self.sample_calls += k
        return slots, weights, probs

    def update(self, storage: Storage, keys: np.ndarray, priority: np.ndarray) -> None:
        live = storage.is_live(keys)
        if not live.all():
            keys, priority = keys[live], priority[live]
            if keys.size == 0:
                return
        self.tree.update(keys % storage.capacity, priority)
        self.max_priority = max(self.max_priority, float(priority.max()))

    def state_dict(self, storage: Storage) -> dict[str, Any]:
        return {"priorities": torch.from_numpy(self.tree.leaves(storage.filled)), "max_priority": self.max_priority,
                "rng": plain(self.rng.bit_generator.state), "sample_calls": self.sample_calls}

    def load_state_dict(self, state: dict[str, Any], storage: Storage) -> None:
        prio = state["priorities"]
        leaves = prio.numpy() if isinstance(prio, torch.Tensor) else np.asarray(prio, dtype=np.float64)
        if leaves.shape[0] != storage.filled:
            raise ValueError(f"replay checkpoint has {leaves.shape[0]} priorities for {storage.filled} items")
        self.tree.set_leaves(leaves)
        self.max_priority = float(state["max_priority"])
        super().load_state_dict(state, storage)


class FifoSampler(UniformSampler):
    """A queue over the storage: batches take the oldest unread items, each item is read
    once, and an insert is refused while it would overwrite unread items (so a full queue
    pauses its producers). Weights 1; priorities ignored."""

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.next_read = 0  # key of the oldest unread item

    def unread(self, storage: Storage) -> int:
        # An insert past the room (a graceful stop drains in flight past every limit)
        # overwrites the oldest unread items: they are skipped, never read twice.
        self.next_read = max(self.next_read, storage.inserted - storage.capacity)
        return storage.inserted - self.next_read

    def can_sample(self, storage: Storage, n: int) -> bool:
        return self.unread(storage) >= n

    def can_insert(self, storage: Storage, n: int) -> bool:
        return self.unread(storage) + n <= storage.capacity

    def draw(self, storage: Storage, batch_size: int, num_batches: int) -> tuple[np.ndarray, np.ndarray, None]:
        m = batch_size * num_batches
        if self.unread(storage) < m:  # (also skips overwritten items)
            raise ValueError(f"cannot read {m} items: the queue holds {self.unread(storage)} unread")
        keys = np.arange(self.next_read, self.next_read + m, dtype=np.int64)
        self.next_read += m
        self.sample_calls += num_batches
        return keys % storage.capacity, np.ones(m, dtype=np.float32), None

    def state_dict(self, storage: Storage) -> dict[str, Any]:
        return dict(super().state_dict(storage), next_read=self.next_read)

    def load_state_dict(self, state: dict[str, Any], storage: Storage) -> None:
        super().load_state_dict(state, storage)
        self.next_read = int(state["next_read"])
