"""Experience replay as storage + sampler + rate limiter (the way TorchRL composes
``ReplayBuffer(storage, sampler, writer)``).

- storage (:mod:`~distdqn.replay.storage`, :mod:`~distdqn.replay.frame_storage`): where
  items live, built from the agent's item spec;
- sampler (:mod:`~distdqn.replay.samplers`): uniform, prioritized or FIFO;
- rate limiter (:mod:`~distdqn.replay.rate_limiter`): the replay ratio.

With frame deduplication (frame-stack fields in the spec) the items live in a
:class:`~distdqn.replay.frame_storage.FrameStorage`; its items can die before their slot
is reused (their frames were overwritten): a dead item gets priority 0 (so proportional
sampling never draws it), is skipped by uniform sampling, is not counted in
``len(replay)`` (nor in the N of the importance weights), and priority updates for it are
ignored like those for overwritten keys.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distdqn.config import ReplayConfig
from distdqn.core import Batch, Chunk, ItemSpec
from distdqn.replay.frame_storage import FrameStorage
from distdqn.replay.rate_limiter import RateLimiter
from distdqn.replay.samplers import FifoSampler, PrioritizedSampler, UniformSampler
from distdqn.replay.storage import RingStorage

SAMPLERS = ("uniform", "prioritized", "fifo")


class Replay:
    """A replay: ``storage`` holds the items, ``sampler`` picks them, ``rate_limiter`` keeps
    the replay ratio (see the module docstring).

    Not thread-safe: callers that share it between threads must lock around calls. The
    rate limiter is advisory: :meth:`insert` and :meth:`sample` count but do not refuse;
    callers check :meth:`can_insert` / :meth:`can_sample` first.

    Args:
        storage: a :class:`RingStorage` or :class:`FrameStorage`.
        sampler: a :class:`UniformSampler`, :class:`PrioritizedSampler` or :class:`FifoSampler`.
        rate_limiter: the replay ratio.
        kind: the sampler's name (``replay.kind``), checked against checkpoints.
    """

    def __init__(self, storage: RingStorage | FrameStorage, sampler: UniformSampler, rate_limiter: RateLimiter,
                 kind: str):
        self.storage, self.sampler, self.rate_limiter, self.kind = storage, sampler, rate_limiter, kind

    # ------------------------------------------------------------------ sizes

    def __len__(self) -> int:
        """Items currently held (and sampleable)."""
        return len(self.storage)

    @property
    def tree(self):
        """The prioritized sampler's sum tree, else None."""
        return self.sampler.tree

    @property
    def nbytes(self) -> int:
        """Bytes held: the storage's occupied slots plus the sum tree (allocated whole)."""
        return self.storage.nbytes + (self.tree.nbytes if self.tree is not None else 0)

    @property
    def inserted(self) -> int:
        """Items ever inserted."""
        return self.storage.inserted

    @property
    def samples(self) -> int:
        """Items ever sampled (a batch of B counts B)."""
        return self.rate_limiter.samples

    @property
    def sample_calls(self) -> int:
        """Number of batches sampled so far (drives beta annealing)."""
        return self.sampler.sample_calls

    @property
    def max_priority(self) -> float:
        """Largest stored priority p^alpha seen so far (starts at 1.0)."""
        return self.sampler.max_priority

    @property
    def beta(self) -> float:
        """The IS exponent the next :meth:`sample` uses (1 for uniform and FIFO sampling)."""
        return self.sampler.beta

    def can_insert(self, n: int) -> bool:
        """Whether the rate limiter (and a FIFO sampler's free room) allow inserting ``n`` items now."""
        return self.rate_limiter.can_insert(n, len(self)) and self.sampler.can_insert(self.storage, n)

    def can_sample(self, batch_size: int) -> bool:
        """Whether ``batch_size`` items are stored (unread, for FIFO) and the rate limiter allows it."""
        return self.sampler.can_sample(self.storage, batch_size) and self.rate_limiter.can_sample(batch_size, len(self))

    # ------------------------------------------------------------------ insert / sample / update

    def insert(self, chunk: Chunk) -> np.ndarray:
        """Store a chunk's T items and count them in the rate limiter.

        Prioritized: new items get ``(|chunk.priority| + epsilon)^alpha`` when
        ``replay.initial_priority == "actor"`` and the chunk carries priorities, otherwise
        the max priority seen so far.

        Returns:
            ``[T]`` int64 keys.

        Raises:
            ValueError: on shape mismatches or non-finite actor priorities (nothing stored).
        """
        t = len(chunk)
        s = self.sampler
        prio = s.initial(chunk.priority, t) if isinstance(s, PrioritizedSampler) else None
        keys = self.storage.add(chunk)
        s.on_insert(self.storage, keys, prio)
        s.on_killed(self.storage.take_killed())  # frame storage: items whose frames are gone
        self.rate_limiter.on_insert(t)
        return keys

    def sample(self, batch_size: int, num_batches: int = 1) -> Batch:
        """Draw ``num_batches`` batches of ``batch_size`` items in one call, laid out batch after
        batch (split them with :meth:`Batch.split`); one call of several batches costs about
        as much as one of a single batch (the draw and the gathers are vectorized).

        Returns:
            :class:`~distdqn.core.Batch` of CPU tensors ``[M, *field.shape]`` with
            ``M = batch_size * num_batches``, ``[M]`` float32 weights, ``[M]`` int64 keys.

        Raises:
            ValueError: if ``batch_size < 1``, ``num_batches < 1`` or fewer than
                ``batch_size`` items are stored.
        """
        b, k = int(batch_size), int(num_batches)
        n = len(self.storage)
        if b < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if k < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        if n < b:
            raise ValueError(f"cannot sample a batch of {b}: replay holds only {n} transitions")
        slots, weights, probs = self.sampler.draw(self.storage, b, k)
        data = self.storage.get(slots)
        self.rate_limiter.on_sample(b * k)
        return Batch(data={name: torch.from_numpy(a) for name, a in data.items()}, keys=self.storage.keys_of(slots),
                     weights=torch.from_numpy(weights), probs=probs)

    def update_priorities(self, keys: np.ndarray, td_abs: np.ndarray) -> None:
        """Set ``p = (|td| + epsilon)^alpha`` for the items ``keys`` (Schaul et al. 2016, eq. 1).

        Keys whose slot has been overwritten since they were sampled are ignored. Duplicate
        keys: the last one wins. No-op for uniform and FIFO sampling (beyond validation).

        Args:
            keys: ``[K]`` int64 from :attr:`Batch.keys`.
            td_abs: ``[K]`` float |TD errors|.

        Raises:
            ValueError: on mismatched lengths, NaN/inf td, or keys never issued (>= inserted or < 0).
        """
        k = np.asarray(keys, dtype=np.int64).reshape(-1)
        td = np.asarray(td_abs).reshape(-1)
        if k.shape != td.shape:
            raise ValueError(f"update_priorities: {k.shape[0]} keys but {td.shape[0]} td values")
        if k.size and (k.min() < 0 or k.max() >= self.storage.inserted):
            raise ValueError(f"update_priorities: keys must be in [0, {self.storage.inserted}) (issued keys)")
        if not isinstance(self.sampler, PrioritizedSampler):
            finite = np.isfinite(np.asarray(td, dtype=np.float64))
            if not finite.all():
                raise ValueError(f"update_priorities td_abs: {int(np.count_nonzero(~finite))} of {td.shape[0]} "
                                 "values are NaN or inf")
            return
        prio = self.sampler.priority(td, "update_priorities td_abs")
        if k.size:
            self.sampler.update(self.storage, k, prio)

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact resume, as tensors and Python scalars/strings.

        Survives ``torch.save`` + ``torch.load(weights_only=True)``. Storage tensors share
        memory with the replay (see :meth:`RingStorage.state_dict`).
        """
        return {"kind": self.kind, "storage": self.storage.state_dict(), **self.sampler.state_dict(self.storage),
                "rate_limiter": self.rate_limiter.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; later samples are identical to the original's.

        Raises:
            ValueError: if the replay kind, capacity or item spec differ.
        """
        if state["kind"] != self.kind:
            raise ValueError(f"replay checkpoint is {state['kind']!r}, this replay is {self.kind!r}")
        self.storage.load_state_dict(state["storage"])
        self.sampler.load_state_dict(state, self.storage)
        self.rate_limiter.load_state_dict(state["rate_limiter"])


def make_replay(config: ReplayConfig, batch_size: int, spec: ItemSpec, seed: int,
                frame_capacity: int | None = None) -> Replay:
    """The :class:`Replay` that ``config`` describes for items of ``spec``.

    Storage: a :class:`FrameStorage` when the spec declares frame-stack fields (the agent
    declares them when ``replay.frame_dedup`` resolves to on), else a :class:`RingStorage`.
    Sampler: ``config.kind``. Rate limiter: ``samples_per_insert``, ``min_replay_size``,
    ``error_buffer`` (None: ``4 * max(samples_per_insert, batch_size)``, as
    :func:`distdqn.config.error_buffer`), ``batch_size`` for its deadlock check.

    Args:
        config: the replay section.
        batch_size: items one learning step samples.
        spec: the agent's item spec.
        seed: seed of the sampler's generator.
        frame_capacity: frame slots of a frame storage (default
            :func:`~distdqn.replay.frame_storage.default_frame_capacity`).

    Raises:
        ConfigError: from the rate limiter (see :class:`RateLimiter`).
        ValueError: an unknown ``config.kind`` or a non-positive capacity.
    """
    if config.kind not in SAMPLERS:
        raise ValueError(f"unknown replay kind {config.kind!r}; expected one of {', '.join(SAMPLERS)}")
    if spec.frame_fields():
        storage: RingStorage | FrameStorage = FrameStorage(config.capacity, spec, frame_capacity)
    else:
        storage = RingStorage(config.capacity, spec)
    if config.kind == "prioritized":
        sampler: UniformSampler = PrioritizedSampler(config, config.capacity, seed)
    elif config.kind == "fifo":
        sampler = FifoSampler(seed)
    else:
        sampler = UniformSampler(seed)
    buf = config.error_buffer
    if buf is None:
        buf = 4.0 * max(config.samples_per_insert, batch_size)
    limiter = RateLimiter(config.samples_per_insert, config.min_replay_size, float(buf), batch_size)
    return Replay(storage, sampler, limiter, config.kind)
