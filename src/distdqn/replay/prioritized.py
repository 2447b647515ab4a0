"""Uniform and proportional prioritized experience replay.

Prioritized replay follows Schaul, Quan, Antonoglou & Silver (2016), *Prioritized
Experience Replay*: proportional variant, p_i = (|delta_i| + epsilon)^alpha,
P(i) = p_i / sum_k p_k (eq. 1, with the exponent folded into the stored priority),
stratified sampling over a sum tree (App. B.2.1), and importance-sampling weights
w_i = (N * P(i))^-beta normalized by their maximum (sec. 3.4), with beta annealed
linearly to 1. New items get the maximum priority seen so far (Schaul et al. 2016,
Alg. 1) or, as in Ape-X (Horgan et al. 2018, sec. 3), the |TD error| the actor computed.

With ``config.frame_dedup == "on"`` the transitions live in a
:class:`~distdqn.replay.frame_storage.FrameStorage` (each stacked-frame observation's
frames stored once, stacks rebuilt at sample time). Its transitions can die before their
slot is reused (their frames were overwritten): a dead transition gets priority 0 in the
sum tree (so proportional sampling never draws it), is skipped by uniform sampling, is not
counted in ``len(replay)`` (nor in the N of the importance weights), and priority updates
for it are ignored like those for overwritten keys.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distdqn.config import ReplayConfig
from distdqn.core import SampledBatch, TransitionChunk
from distdqn.replay.frame_storage import FrameStorage
from distdqn.replay.rate_limiter import RateLimiter
from distdqn.replay.storage import RingStorage
from distdqn.replay.sum_tree import SumTree


def _plain(value: Any) -> Any:
    """Nested dicts/lists of numpy scalars -> the same with Python str/int/float."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


class Replay:
    """Experience replay: ring storage + (optional) sum-tree sampler + rate limiter.

    ``config.kind == "uniform"``: samples stored transitions uniformly with replacement,
    weights all 1; :meth:`update_priorities` is a no-op. ``"prioritized"``: proportional
    prioritization (Schaul et al. 2016), see the module docstring.

    Not thread-safe: callers that share it between threads must lock around calls. The
    rate limiter is advisory: :meth:`insert` and :meth:`sample` count but do not refuse;
    callers check :meth:`can_insert` / :meth:`can_sample` first.

    Args:
        config: the replay section of the experiment config.
        batch_size: the learner's batch size (rate limiter deadlock check and default error buffer).
        obs_shape: shape of one observation.
        obs_dtype: observation dtype.
        seed: seed of the replay's only random generator, ``np.random.default_rng(seed)``.
        frame_capacity: frame slots of the frame-deduplicated storage (default
            :func:`~distdqn.replay.frame_storage.default_frame_capacity`); ignored otherwise.

    ``config.frame_dedup``: ``"on"`` stores frames once
    (:class:`~distdqn.replay.frame_storage.FrameStorage`; accepts compact and stacked
    chunks), ``"off"`` and ``"auto"`` store whole observations (:class:`RingStorage`):
    ``auto`` needs to know the environment and is resolved by
    :func:`distdqn.program.build_replay`, which hands this class ``"on"`` or ``"off"``.

    Raises:
        ConfigError: from the rate limiter (see :class:`RateLimiter`).
        ValueError: on an unknown ``config.kind`` or a non-positive capacity.
    """

    def __init__(
        self,
        config: ReplayConfig,
        batch_size: int,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype | type,
        seed: int,
        frame_capacity: int | None = None,
    ):
        if config.kind not in ("uniform", "prioritized"):
            raise ValueError(f"unknown replay kind {config.kind!r}; expected 'uniform' or 'prioritized'")
        self.config: ReplayConfig = config
        self.prioritized: bool = config.kind == "prioritized"
        self.frame_dedup: bool = getattr(config, "frame_dedup", "off") == "on"
        self.storage: RingStorage | FrameStorage
        if self.frame_dedup:
            self.storage = FrameStorage(config.capacity, obs_shape, obs_dtype, frame_capacity)
        else:
            self.storage = RingStorage(config.capacity, obs_shape, obs_dtype)
        self.tree: SumTree | None = SumTree(config.capacity) if self.prioritized else None
        buf = config.error_buffer
        if buf is None:  # same default as distdqn.config.error_buffer
            buf = 4.0 * max(config.samples_per_insert, batch_size)
        self.rate_limiter: RateLimiter = RateLimiter(
            config.samples_per_insert, config.min_replay_size, float(buf), batch_size
        )
        self._alpha: float = float(config.priority_exponent)
        self._eps: float = float(config.priority_epsilon)
        self._beta0: float = float(config.importance_sampling_exponent)
        self._beta_steps: int = max(1, int(config.beta_anneal_updates))
        self._max_priority: float = 1.0
        self._sample_calls: int = 0
        self._rng: np.random.Generator = np.random.default_rng(seed)

    # ------------------------------------------------------------------ sizes

    def __len__(self) -> int:
        """Transitions currently held (and sampleable)."""
        return len(self.storage)

    @property
    def nbytes(self) -> int:
        """Bytes held: the storage's occupied slots plus the sum tree (allocated whole)."""
        return self.storage.nbytes + (self.tree.nbytes if self.tree is not None else 0)

    @property
    def inserted(self) -> int:
        """Transitions ever inserted."""
        return self.storage.inserted

    @property
    def samples(self) -> int:
        """Transitions ever sampled (a batch of B counts B)."""
        return self.rate_limiter.samples

    @property
    def sample_calls(self) -> int:
        """Number of batches sampled so far (drives beta annealing)."""
        return self._sample_calls

    @property
    def max_priority(self) -> float:
        """Largest stored priority p^alpha seen so far (starts at 1.0)."""
        return self._max_priority

    @property
    def beta(self) -> float:
        """The IS exponent the next :meth:`sample` uses: linear from
        ``importance_sampling_exponent`` to 1 over ``beta_anneal_updates`` calls."""
        frac = min(1.0, self._sample_calls / self._beta_steps)
        return self._beta0 + (1.0 - self._beta0) * frac

    def can_insert(self, n: int) -> bool:
        """Whether the rate limiter allows inserting ``n`` transitions now."""
        return self.rate_limiter.can_insert(n, len(self))

    def can_sample(self, batch_size: int) -> bool:
        """Whether ``batch_size`` transitions are stored and the rate limiter allows sampling them."""
        return len(self) >= batch_size and self.rate_limiter.can_sample(batch_size, len(self))

    # ------------------------------------------------------------------ priorities

    def _priority(self, td_abs: np.ndarray, what: str) -> np.ndarray:
        """``(|td| + epsilon)^alpha`` as float64; raises ValueError on NaN/inf."""
        td = np.asarray(td_abs, dtype=np.float64).reshape(-1)
        if not np.isfinite(td).all():
            bad = int(np.count_nonzero(~np.isfinite(td)))
            raise ValueError(f"{what}: {bad} of {td.shape[0]} values are NaN or inf")
        return np.power(np.abs(td) + self._eps, self._alpha)

    # ------------------------------------------------------------------ insert / sample / update

    def insert(self, chunk: TransitionChunk) -> np.ndarray:
        """Store a chunk's T transitions and count them in the rate limiter.

        Prioritized: new items get ``(|chunk.priority| + epsilon)^alpha`` when
        ``config.initial_priority == "actor"`` and the chunk carries priorities,
        otherwise the max priority seen so far.

        Returns:
            ``[T]`` int64 keys.

        Raises:
            ValueError: on shape mismatches or non-finite actor priorities.
        """
        t = len(chunk)
        prio: np.ndarray | None = None
        if self.tree is not None and self.config.initial_priority == "actor" and chunk.priority is not None:
            if np.shape(chunk.priority) != (t,):
                raise ValueError(f"chunk.priority has shape {np.shape(chunk.priority)}, expected ({t},)")
            prio = self._priority(chunk.priority, "chunk.priority")
        keys = self.storage.add(chunk)
        if self.tree is not None and t > 0:
            if prio is None:
                prio = np.full(t, self._max_priority, dtype=np.float64)
            else:
                self._max_priority = max(self._max_priority, float(prio.max()))
            # Duplicate slots (T > capacity): the tree keeps the last write, like the storage.
            self.tree.update(keys % self.storage.capacity, prio)
        killed = self.storage.take_killed()  # frame storage: transitions whose frames are gone
        if self.tree is not None and killed.size:
            self.tree.update(killed, np.zeros(killed.size))
        self.rate_limiter.on_insert(t)
        return keys

    def sample(self, batch_size: int, num_batches: int = 1) -> SampledBatch:
        """Draw ``num_batches`` batches of ``batch_size`` transitions (with replacement) in one
        call, laid out batch after batch (split them with :meth:`SampledBatch.split`).

        Uniform: slots uniform over the stored items, weights 1. Prioritized: stratified
        proportional sampling, [0, total) split into ``M = batch_size * num_batches`` equal
        segments with one uniform draw each (Schaul et al. 2016, App. B.2.1), P(i) = p_i /
        sum_k p_k (eq. 1) and weights ``w_i = (N * P(i))^-beta / max_j w_j`` (sec. 3.4), the
        max taken per batch. Batch ``j`` takes segments ``j, j + num_batches, ...``, so each
        batch is a stratified sample over the whole priority mass; all batches of a call
        share one ``beta``, and the annealing counts ``num_batches`` samples. One call of
        ``num_batches`` costs about as much as one of a single batch (the tree descent and
        the gathers are vectorized): a learner that takes several batches per call spends
        less per update on replay.

        Returns:
            :class:`SampledBatch` of CPU tensors: obs/next_obs ``[M, *obs_shape]``, action
            ``[M]`` int64, reward/discount/weights ``[M]`` float32; keys ``[M]`` int64 numpy.

        Raises:
            ValueError: if ``batch_size < 1``, ``num_batches < 1`` or fewer than
                ``batch_size`` transitions are stored.
        """
        b, k = int(batch_size), int(num_batches)
        n = len(self.storage)
        if b < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if k < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        if n < b:
            raise ValueError(f"cannot sample a batch of {b}: replay holds only {n} transitions")
        m = b * k
        if self.tree is None:
            slots = self.storage.sample_uniform(self._rng, m)
            weights = np.ones(m, dtype=np.float32)
            probs = None
        else:
            total = self.tree.total()
            u = (np.arange(m, dtype=np.float64) + self._rng.random(m)) * (total / m)
            if k > 1:  # row r of batch j: segment j + k*r
                u = u.reshape(b, k).T.reshape(-1)
            slots = self.tree.find_prefix_sum(u)
            probs = self.tree[slots] / total
            w = np.power(n * probs, -self.beta).reshape(k, b)
            weights = (w / w.max(axis=1, keepdims=True)).astype(np.float32).reshape(-1)
        data = self.storage.get(slots)
        self._sample_calls += k
        self.rate_limiter.on_sample(m)
        return SampledBatch(
            obs=torch.from_numpy(data["obs"]),
            action=torch.from_numpy(data["action"]),
            reward=torch.from_numpy(data["reward"]),
            discount=torch.from_numpy(data["discount"]),
            next_obs=torch.from_numpy(data["next_obs"]),
            weights=torch.from_numpy(weights),
            keys=self.storage.keys_of(slots),
            probs=probs,
        )

    def update_priorities(self, keys: np.ndarray, td_abs: np.ndarray) -> None:
        """Set ``p = (|td| + epsilon)^alpha`` for the transitions ``keys`` (Schaul et al. 2016, eq. 1).

        Keys whose slot has been overwritten since they were sampled are ignored. Duplicate
        keys: the last one wins. No-op for uniform replay (beyond validation).

        Args:
            keys: ``[K]`` int64 from :attr:`SampledBatch.keys`.
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
        prio = self._priority(td, "update_priorities td_abs")
        if self.tree is None or k.size == 0:
            return
        live = self.storage.is_live(k)
        if not live.all():
            k, prio = k[live], prio[live]
            if k.size == 0:
                return
        self.tree.update(k % self.storage.capacity, prio)
        self._max_priority = max(self._max_priority, float(prio.max()))

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact resume, as tensors and Python scalars/strings.

        Survives ``torch.save`` + ``torch.load(weights_only=True)``. Storage tensors share
        memory with the replay (see :meth:`RingStorage.state_dict`).
        """
        n = self.storage.filled
        return {
            "kind": self.config.kind,
            "storage": self.storage.state_dict(),
            "priorities": torch.from_numpy(self.tree.leaves(n)) if self.tree is not None else None,
            "max_priority": self._max_priority,
            "rate_limiter": self.rate_limiter.state_dict(),
            "rng": _plain(self._rng.bit_generator.state),
            "sample_calls": self._sample_calls,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; later samples are identical to the original's.

        Raises:
            ValueError: if the replay kind, capacity or observation spec differ.
        """
        if state["kind"] != self.config.kind:
            raise ValueError(f"replay checkpoint is {state['kind']!r}, this replay is {self.config.kind!r}")
        self.storage.load_state_dict(state["storage"])
        if self.tree is not None:
            prio = state["priorities"]
            leaves = prio.numpy() if isinstance(prio, torch.Tensor) else np.asarray(prio, dtype=np.float64)
            if leaves.shape[0] != self.storage.filled:
                raise ValueError(f"replay checkpoint has {leaves.shape[0]} priorities for {self.storage.filled} items")
            self.tree.set_leaves(leaves)
        self._max_priority = float(state["max_priority"])
        self.rate_limiter.load_state_dict(state["rate_limiter"])
        self._rng.bit_generator.state = state["rng"]
        self._sample_calls = int(state["sample_calls"])


def make_replay(
    config: ReplayConfig, batch_size: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype | type, seed: int,
    frame_capacity: int | None = None,
) -> Replay:
    """Build the :class:`Replay` described by ``config`` (uniform or prioritized, frame
    deduplication as ``config.frame_dedup`` says: ``"on"`` or not)."""
    return Replay(config, batch_size, obs_shape, obs_dtype, seed, frame_capacity)
