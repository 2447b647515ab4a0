"""Preallocated ring buffer of n-step transitions (numpy), addressed by global keys."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distdqn.core import TransitionChunk

_FIELDS: tuple[str, ...] = ("obs", "next_obs", "action", "reward", "discount")


class RingStorage:
    """Fixed-capacity FIFO storage of transitions in preallocated numpy arrays.

    Every inserted transition gets a *key*: its global insertion index (int64, 0, 1,
    2, ... across the whole run). It lives in slot ``key % capacity`` until
    ``capacity`` newer transitions overwrite it; :meth:`is_live` tells whether a key
    still addresses the transition it was issued for.

    Arrays (slot-indexed, leading dim ``capacity``): ``obs`` and ``next_obs``
    ``[capacity, *obs_shape]`` of ``obs_dtype``; ``action`` int64; ``reward`` and
    ``discount`` float32.

    Args:
        capacity: number of transitions held, >= 1.
        obs_shape: shape of one observation, e.g. ``(4,)`` or ``(4, 84, 84)``.
        obs_dtype: observation dtype (float32 or uint8 in practice).

    Raises:
        ValueError: if ``capacity < 1``.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype | type):
        capacity = int(capacity)
        if capacity < 1:
            raise ValueError(f"RingStorage capacity must be >= 1, got {capacity}")
        self.capacity: int = capacity
        self.obs_shape: tuple[int, ...] = tuple(int(d) for d in obs_shape)
        self.obs_dtype: np.dtype = np.dtype(obs_dtype)
        self.obs = np.zeros((capacity, *self.obs_shape), dtype=self.obs_dtype)
        self.next_obs = np.zeros((capacity, *self.obs_shape), dtype=self.obs_dtype)
        self.action = np.zeros(capacity, dtype=np.int64)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.discount = np.zeros(capacity, dtype=np.float32)
        self._inserted: int = 0

    # ------------------------------------------------------------------ sizes and keys

    @property
    def nbytes(self) -> int:
        """Bytes of the occupied slots of the arrays (what the storage holds in memory now)."""
        per_slot = sum(a.itemsize * int(np.prod(a.shape[1:])) for a in
                       (self.obs, self.next_obs, self.action, self.reward, self.discount))
        return per_slot * self.filled

    def __len__(self) -> int:
        """Transitions currently held: ``min(inserted, capacity)``."""
        return min(self._inserted, self.capacity)

    @property
    def inserted(self) -> int:
        """Total transitions ever inserted (= the next key)."""
        return self._inserted

    @property
    def filled(self) -> int:
        """Occupied slots (= ``len(self)``: every stored transition is sampleable)."""
        return len(self)

    def sample_uniform(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """``[B]`` int64 slots uniform over the stored transitions (with replacement)."""
        return rng.integers(0, len(self), size=batch_size, dtype=np.int64)

    def take_killed(self) -> np.ndarray:
        """Slots whose transitions died since the last call: never any here (see
        :class:`~distdqn.replay.frame_storage.FrameStorage`)."""
        return np.zeros(0, dtype=np.int64)

    def is_live(self, keys: np.ndarray) -> np.ndarray:
        """``[K]`` bool: True where key ``k`` satisfies ``inserted - capacity <= k < inserted``,
        i.e. it was issued and its slot has not been overwritten since."""
        k = np.asarray(keys, dtype=np.int64)
        return (k >= self._inserted - self.capacity) & (k >= 0) & (k < self._inserted)

    def keys_of(self, slots: np.ndarray) -> np.ndarray:
        """``[K]`` int64: the key of the transition currently in each of ``slots`` (filled slots only)."""
        s = np.asarray(slots, dtype=np.int64)
        last = self._inserted - 1
        return last - np.mod(last - s, self.capacity)

    # ------------------------------------------------------------------ data

    def add(self, chunk: TransitionChunk) -> np.ndarray:
        """Write the chunk's ``T`` transitions at the ring position, overwriting the oldest.

        At most two slice copies per field (before and after the wrap). If ``T > capacity``
        only the last ``capacity`` transitions are written; the earlier ones get keys that
        are already stale.

        Returns:
            ``[T]`` int64 keys, ``inserted, ..., inserted + T - 1`` (before the call).

        Raises:
            ValueError: if field shapes or the observation shape do not match.
        """
        t = len(chunk)
        if chunk.obs is None or chunk.next_obs is None:
            raise ValueError("a frame-deduplicated (compact) chunk needs a replay with frame deduplication "
                             "(replay.frame_dedup); this replay stores whole observations")
        for name in _FIELDS:
            arr = getattr(chunk, name)
            if arr.shape[:1] != (t,):
                raise ValueError(f"chunk.{name} has leading dim {arr.shape[:1]}, expected ({t},)")
        for name in ("obs", "next_obs"):
            shape = tuple(getattr(chunk, name).shape[1:])
            if shape != self.obs_shape:
                raise ValueError(f"chunk.{name} has observation shape {shape}, replay expects {self.obs_shape}")
        start = self._inserted
        keys = np.arange(start, start + t, dtype=np.int64)
        if t == 0:
            return keys
        skip = max(0, t - self.capacity)  # only the last `capacity` transitions survive
        n = t - skip
        pos = (start + skip) % self.capacity
        first = min(n, self.capacity - pos)
        for name in _FIELDS:
            src = getattr(chunk, name)
            dst = getattr(self, name)
            dst[pos : pos + first] = src[skip : skip + first]
            if first < n:
                dst[: n - first] = src[skip + first :]
        self._inserted += t
        return keys

    def get(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Gather transitions by slot.

        Args:
            slots: ``[K]`` int64 slot indices in ``[0, len(self))``.

        Returns:
            dict with ``obs`` / ``next_obs`` ``[K, *obs_shape]``, ``action`` ``[K]`` int64,
            ``reward`` / ``discount`` ``[K]`` float32 (fresh arrays, not views).
        """
        s = np.asarray(slots, dtype=np.int64)
        # ndarray.take along axis 0 is several times faster than fancy indexing for [N, ...] arrays.
        return {name: getattr(self, name).take(s, axis=0) for name in _FIELDS}

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Filled part of the arrays as torch tensors plus Python ints.

        Loadable with ``torch.load(weights_only=True)``. The tensors share memory with
        the storage (no copy of a possibly large buffer): save them before the next
        :meth:`add`.
        """
        n = len(self)
        out: dict[str, Any] = {
            "layout": "stacks",
            "capacity": self.capacity,
            "inserted": self._inserted,
            "obs_shape": list(self.obs_shape),
            "obs_dtype": str(self.obs_dtype),
        }
        for name in _FIELDS:
            out[name] = torch.from_numpy(getattr(self, name)[:n])
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` output.

        Raises:
            ValueError: if capacity, observation shape or dtype differ from this storage's.
        """
        if state.get("layout", "stacks") != "stacks":
            raise ValueError("replay checkpoint deduplicates frames (replay.frame_dedup); this replay stores "
                             "whole observations")
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay checkpoint has capacity {state['capacity']}, this replay {self.capacity}")
        if tuple(state["obs_shape"]) != self.obs_shape or str(state["obs_dtype"]) != str(self.obs_dtype):
            raise ValueError(
                f"replay checkpoint holds observations {tuple(state['obs_shape'])} {state['obs_dtype']}, "
                f"this replay expects {self.obs_shape} {self.obs_dtype}"
            )
        inserted = int(state["inserted"])
        n = min(inserted, self.capacity)
        for name in _FIELDS:
            src = state[name]
            arr = src.numpy() if isinstance(src, torch.Tensor) else np.asarray(src)
            if arr.shape[0] != n:
                raise ValueError(f"replay checkpoint field {name} has {arr.shape[0]} rows, expected {n}")
            dst = getattr(self, name)
            dst[:n] = arr
            dst[n:] = 0
        self._inserted = inserted
