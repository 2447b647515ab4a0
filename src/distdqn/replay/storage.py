"""Preallocated ring storage of items (numpy), built from an item spec, addressed by global keys."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distdqn.core import Chunk, ItemSpec


def check_rows(chunk: Chunk, names: tuple[str, ...]) -> int:
    """The chunk's item count T, after checking that each of ``names`` is a ``[T, ...]`` array.

    Raises:
        ValueError: a field is missing or has another leading dimension.
    """
    t = len(chunk)
    for name in names:
        arr = chunk.data.get(name)
        if arr is None:
            raise ValueError(f"chunk has no field {name!r} (fields: {', '.join(chunk.data)})")
        if arr.shape[:1] != (t,):
            raise ValueError(f"chunk.{name} has leading dim {arr.shape[:1]}, expected ({t},)")
    return t


def ring_write(dst: np.ndarray, start: int, src: np.ndarray) -> None:
    """Write ``src`` (``[T, ...]``) into the ring ``dst`` from position ``start % len(dst)``
    on, wrapping; when ``T > len(dst)`` only the last ``len(dst)`` rows survive (at most two
    slice copies)."""
    cap, t = dst.shape[0], src.shape[0]
    skip = max(0, t - cap)
    n = t - skip
    if n == 0:
        return
    pos = (start + skip) % cap
    first = min(n, cap - pos)
    dst[pos : pos + first] = src[skip : skip + first]
    if first < n:
        dst[: n - first] = src[skip + first :]


def load_columns(state: dict[str, Any], columns: list[tuple[str, int, np.ndarray]]) -> None:
    """Copy checkpointed columns into their rings: ``(name, rows, destination)`` each, the
    first ``rows`` rows from ``state[name]``, the rest zeroed.

    Raises:
        ValueError: a missing column, or one of another length, shape or dtype.
    """
    for name, rows, dst in columns:
        if name not in state:
            raise ValueError(f"replay checkpoint has no field {name!r}")
        src = state[name]
        arr = src.numpy() if isinstance(src, torch.Tensor) else np.asarray(src)
        if arr.shape[0] != rows:
            raise ValueError(f"replay checkpoint field {name} has {arr.shape[0]} rows, expected {rows}")
        if arr.shape[1:] != dst.shape[1:] or arr.dtype != dst.dtype:
            raise ValueError(f"replay checkpoint field {name} holds {tuple(arr.shape[1:])} {arr.dtype}, "
                             f"this replay expects {tuple(dst.shape[1:])} {dst.dtype}")
        dst[:rows] = arr
        dst[rows:] = 0


class RingStorage:
    """Fixed-capacity FIFO storage of items in preallocated numpy arrays, one per field.

    Every inserted item gets a *key*: its global insertion index (int64, 0, 1, 2, ... across
    the whole run). It lives in slot ``key % capacity`` until ``capacity`` newer items
    overwrite it; :meth:`is_live` tells whether a key still addresses the item it was issued
    for. Field arrays (``[capacity, *field.shape]`` of ``field.dtype``) are also attributes:
    ``storage.obs``. Sequences (R2D2) are items whose fields have a leading time axis.

    Args:
        capacity: number of items held, >= 1.
        spec: the item spec (frame-stack marks are ignored: whole stacks are stored).

    Raises:
        ValueError: if ``capacity < 1``.
    """

    def __init__(self, capacity: int, spec: ItemSpec):
        capacity = int(capacity)
        if capacity < 1:
            raise ValueError(f"RingStorage capacity must be >= 1, got {capacity}")
        self.capacity: int = capacity
        self.spec: ItemSpec = spec
        self.arrays: dict[str, np.ndarray] = {
            name: np.zeros((capacity, *f.shape), dtype=f.np_dtype) for name, f in spec.items()}
        self._inserted: int = 0

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays")
        if arrays is not None and name in arrays:
            return arrays[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # ------------------------------------------------------------------ sizes and keys

    @property
    def nbytes(self) -> int:
        """Bytes of the occupied slots of the arrays (what the storage holds in memory now)."""
        per_slot = sum(a.itemsize * int(np.prod(a.shape[1:])) for a in self.arrays.values())
        return per_slot * self.filled

    def __len__(self) -> int:
        """Items currently held: ``min(inserted, capacity)``."""
        return min(self._inserted, self.capacity)

    @property
    def inserted(self) -> int:
        """Total items ever inserted (= the next key)."""
        return self._inserted

    @property
    def filled(self) -> int:
        """Occupied slots (= ``len(self)``: every stored item is sampleable)."""
        return len(self)

    def sample_uniform(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """``[B]`` int64 slots uniform over the stored items (with replacement)."""
        return rng.integers(0, len(self), size=batch_size, dtype=np.int64)

    def take_killed(self) -> np.ndarray:
        """Slots whose items died since the last call: never any here (see
        :class:`~distdqn.replay.frame_storage.FrameStorage`)."""
        return np.zeros(0, dtype=np.int64)

    def is_live(self, keys: np.ndarray) -> np.ndarray:
        """``[K]`` bool: True where key ``k`` satisfies ``inserted - capacity <= k < inserted``,
        i.e. it was issued and its slot has not been overwritten since."""
        k = np.asarray(keys, dtype=np.int64)
        return (k >= self._inserted - self.capacity) & (k >= 0) & (k < self._inserted)

    def keys_of(self, slots: np.ndarray) -> np.ndarray:
        """``[K]`` int64: the key of the item currently in each of ``slots`` (filled slots only)."""
        s = np.asarray(slots, dtype=np.int64)
        last = self._inserted - 1
        return last - np.mod(last - s, self.capacity)

    # ------------------------------------------------------------------ data

    def add(self, chunk: Chunk) -> np.ndarray:
        """Write the chunk's ``T`` items at the ring position, overwriting the oldest.

        At most two slice copies per field (before and after the wrap). If ``T > capacity``
        only the last ``capacity`` items are written; the earlier ones get keys that are
        already stale.

        Returns:
            ``[T]`` int64 keys, ``inserted, ..., inserted + T - 1`` (before the call).

        Raises:
            ValueError: a compact chunk, or field shapes that do not match the spec.
        """
        if chunk.frames is not None:
            raise ValueError("a frame-deduplicated (compact) chunk needs a replay with frame deduplication "
                             "(replay.frame_dedup); this replay stores whole observations")
        t = check_rows(chunk, self.spec.names)
        for name, f in self.spec.items():
            shape = tuple(chunk.data[name].shape[1:])
            if shape != f.shape:
                what = "observation shape" if name.endswith("obs") else "shape"
                raise ValueError(f"chunk.{name} has {what} {shape}, replay expects {f.shape}")
        start = self._inserted
        for name, dst in self.arrays.items():
            ring_write(dst, start, chunk.data[name])
        self._inserted += t
        return np.arange(start, start + t, dtype=np.int64)

    def get(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Gather items by slot: name -> ``[K, *field.shape]`` (fresh arrays, not views).

        Args:
            slots: ``[K]`` int64 slot indices in ``[0, len(self))``.
        """
        s = np.asarray(slots, dtype=np.int64)
        # ndarray.take along axis 0 is several times faster than fancy indexing for [N, ...] arrays.
        return {name: a.take(s, axis=0) for name, a in self.arrays.items()}

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Filled part of the arrays as torch tensors plus Python ints.

        Loadable with ``torch.load(weights_only=True)``. The tensors share memory with
        the storage (no copy of a possibly large buffer): save them before the next
        :meth:`add`.
        """
        n = len(self)
        out: dict[str, Any] = {"layout": "stacks", "capacity": self.capacity, "inserted": self._inserted}
        for name, a in self.arrays.items():
            out[name] = torch.from_numpy(a[:n])
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` output.

        Raises:
            ValueError: another layout or capacity, or a field of another shape or dtype.
        """
        if state.get("layout") != "stacks":
            raise ValueError("replay checkpoint deduplicates frames (replay.frame_dedup); this replay stores "
                             "whole observations")
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay checkpoint has capacity {state['capacity']}, this replay {self.capacity}")
        inserted = int(state["inserted"])
        n = min(inserted, self.capacity)
        load_columns(state, [(name, n, dst) for name, dst in self.arrays.items()])
        self._inserted = inserted
