"""Frame-deduplicated ring storage for items whose fields hold frame stacks (Atari).

An Atari observation is a stack of the last ``k`` (4) 84x84 uint8 frames. Storing a DQN
transition's ``obs`` and ``next_obs`` stacks keeps every frame ``2k`` = 8 times; here each
frame is stored **once** and stacks are rebuilt by index when a batch is sampled. Any field
the item spec declares a frame stack (``Field.frames``) is stored this way, one stack per
item (a transition's ``obs``) or a sequence of stacks (R2D2's ``obs [T+1, k, H, W]``,
``Field.stack_axis`` 1: consecutive and overlapping sequences share their frames too); the
other fields live in ordinary rings. Below, "transition" means one item.

Layout
------
- **Frame ring** (``frame_capacity`` F slots): every frame gets a *global frame id* ``g``
  (0, 1, 2, ... in insertion order over all streams) and lives in slot ``g % F`` until F
  newer frames overwrite it. Per frame we also keep ``prev[g % F]``: the global id of the
  frame before it in the same episode, or ``g`` itself for the first frame of an episode.
- **Transition ring** (``capacity`` C slots, addressed by keys exactly like
  :class:`~distdqn.replay.storage.RingStorage`): the ordinary fields (DQN: action, reward,
  discount), per frame-stack field the global id of its stack's newest frame (``[T+1]`` ids
  for a sequence of stacks), the oldest frame id any of the item's stacks needs, and an
  ``alive`` flag.

Rebuilding a stack of the transition's ``obs`` (newest frame ``g``): ``[prev^(k-1)(g), ...,
prev(g), g]``, i.e. ``k - 1`` vectorized gathers of ``prev`` and one gather of frames for
the whole batch, no per-item Python. Because ``prev`` of an episode's first frame is the
frame itself, frames before the episode start come out as the episode's first frame:
exactly the ``"reset"`` padding of ``gymnasium.wrappers.FrameStackObservation``, and no
frame of an earlier episode can ever enter a stack.

Where frames come from
----------------------
Actors send compact chunks (:class:`~distdqn.core.FrameBlock`): their new frames, each with
its predecessor, numbered with the actor's own frame ids. The storage appends the frames
to the ring and maps actor ids to global ids with a short table of the stream's recent
chunks (*segments*: actor id range -> global id range). A reference the table cannot
resolve (the frame is older than the table, was overwritten, or its chunk never arrived)
makes the transition *dead* (stored, counted as inserted, never sampled). A restarted
actor is a new stream (new ``stream`` id); a stream whose ids go backwards is treated as
restarted too. Stacked (ordinary) chunks are accepted as well and converted: their ``2k``
frames per transition are stored as ``2k`` frames (correct, but with no saving: meant for
tests and benchmarks that insert random stacks).

Eviction
--------
The frame ring holds a little more than one frame per transition (default
``C + max(C // 32, 1024)``: a frame per env step plus reset frames plus slack for
streams interleaving and chunks in flight). When frames are overwritten, every
transition still needing them must become unsampleable. Scanning the transition ring on
every insert would cost O(C), so the storage sweeps *ahead*: when the overwrite cutoff
(``frames_written - F``) passes ``swept_to``, it kills (``alive = False``) every transition
whose oldest frame is below ``cutoff + F // 256`` and sets ``swept_to`` there. Invariant:
every alive transition has ``oldest >= swept_to >= cutoff``, so all its frames are intact.
The sweep is one vectorized pass over the transition ring every ``F / 256`` frames
(amortized ~256 element checks per frame, ~1 ms per 4,000 frames at 1M) and evicts a
transition at most ``F / 256`` frames early. Killed slots are
reported by :meth:`FrameStorage.take_killed` so the prioritized replay can zero their
priorities; uniform sampling draws only alive slots.

``len(storage)`` is the number of *alive* transitions; :attr:`FrameStorage.filled` the
number of occupied slots (``min(inserted, capacity)``), the key/slot bookkeeping of
:class:`~distdqn.replay.storage.RingStorage`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distdqn.core import Chunk, ItemSpec
from distdqn.replay.storage import check_rows, load_columns, ring_write

MAX_SEGMENTS = 256
"""Recent chunks per stream whose actor ids can still be resolved: an item names frames at
most ``n_step`` (a transition) or ``T + 1`` (a sequence; ``frame_dedup_enabled`` refuses
T > 254) vector steps older than its chunk, and a chunk covers one vector step or more."""

SWEEP_FRACTION = 256
"""The kill sweep looks ``frame_capacity // SWEEP_FRACTION`` frames ahead of the cutoff."""


def default_frame_capacity(capacity: int, frames_per_item: int = 1, lag: int = 0) -> int:
    """Frame slots for ``capacity`` items that each bring ``frames_per_item`` new frames:
    ``n + max(n // 32, 1024) + lag`` with ``n = capacity * frames_per_item``.

    One frame per env step (a transition brings one; a sequence, ``r2d2.sequence_period``),
    plus one per episode start (~0.1-3% on Atari), plus slack for the lag between a frame's
    arrival and that of the last item using it (``lag``: the frames all streams write while
    a sequence fills, which a transition's n steps do not need).
    """
    n = int(capacity) * int(frames_per_item)
    return n + max(n // 32, 1024) + int(lag)


def frame_storage_bytes(capacity: int, spec: ItemSpec, frame_capacity: int) -> int:
    """The bytes a full :class:`FrameStorage` takes: ``frame_capacity`` frames (each with its
    link) and ``capacity`` item slots (the ordinary fields, the frame ids, the bookkeeping)."""
    per_frame, per_slot = 8, 8 + 1  # prev; oldest, alive
    for _, f in spec.fields:
        if f.frames is None:
            per_slot += int(np.prod(f.shape, dtype=np.int64)) * f.np_dtype.itemsize
        else:
            per_slot += 8 * int(np.prod(f.shape[: f.stack_axis], dtype=np.int64))
            per_frame = 8 + int(np.prod(f.shape[f.stack_axis + 1 :], dtype=np.int64)) * f.np_dtype.itemsize
    return int(frame_capacity) * per_frame + int(capacity) * per_slot


class FrameStorage:
    """Ring storage of items whose frame-stack fields share deduplicated frames.

    Same interface as :class:`~distdqn.replay.storage.RingStorage` (``add``, ``get``,
    ``is_live``, ``keys_of``, ``state_dict``...), plus :meth:`sample_uniform` and
    :meth:`take_killed`. See the module docstring for the design.

    Args:
        capacity: items held, >= 1.
        spec: the item spec; its frame-stack fields (``Field.frames`` set) share one shape
            ``(*lead, k, *frame_shape)`` (axis ``Field.stack_axis`` the stack, oldest
            first), stack axis and dtype.
        frame_capacity: frame slots (default :func:`default_frame_capacity`).

    Raises:
        ValueError: non-positive capacities, no frame-stack field, frame-stack fields of
            different shapes, or of fewer than 2 dimensions.
    """

    def __init__(self, capacity: int, spec: ItemSpec, frame_capacity: int | None = None):
        capacity = int(capacity)
        if capacity < 1:
            raise ValueError(f"FrameStorage capacity must be >= 1, got {capacity}")
        framed = spec.frame_fields()
        if not framed or len({(f.shape, f.dtype, f.stack_axis) for _, f in framed}) != 1:
            raise ValueError("frame deduplication needs frame-stack fields of one shape and dtype, got "
                             f"{[(n, f.shape, f.dtype) for n, f in framed]}")
        axis = framed[0][1].stack_axis
        self.lead: tuple[int, ...] = tuple(framed[0][1].shape[:axis])
        obs_shape = framed[0][1].shape[axis:]
        if len(obs_shape) < 2 or obs_shape[0] < 1:
            raise ValueError(f"frame deduplication needs stacked observations (k, *frame_shape), got {obs_shape}")
        fcap = default_frame_capacity(capacity) if frame_capacity is None else int(frame_capacity)
        if fcap < 1:
            raise ValueError(f"frame_capacity must be >= 1, got {fcap}")
        self.capacity: int = capacity
        self.frame_capacity: int = fcap
        self.spec: ItemSpec = spec
        self.obs_shape: tuple[int, ...] = obs_shape
        self.obs_dtype: np.dtype = framed[0][1].np_dtype
        self.stack: int = obs_shape[0]
        self.frame_shape: tuple[int, ...] = obs_shape[1:]
        self._framed = [(name, f.frames, _gid_name(f.frames)) for name, f in framed]
        self._plain = [(name, f) for name, f in spec.items() if f.frames is None]
        # np.zeros: pages are only committed when first written (RSS grows with use).
        self.frames = np.zeros((fcap, *self.frame_shape), dtype=self.obs_dtype)
        self.prev = np.zeros(fcap, dtype=np.int64)
        self.rings: dict[str, np.ndarray] = {n: np.zeros((capacity, *f.shape), f.np_dtype) for n, f in self._plain}
        for _, _, gid in self._framed:
            self.rings[gid] = np.zeros((capacity, *self.lead), dtype=np.int64)
        self.oldest = np.zeros(capacity, dtype=np.int64)
        self.alive = np.zeros(capacity, dtype=bool)
        self._inserted: int = 0
        self._frames_written: int = 0
        self._swept_to: int = 0
        self._live: int = 0
        self._sweep_ahead: int = max(1, fcap // SWEEP_FRACTION)
        # stream id -> [(actor_start, global_start, count), ...], oldest first
        self._segments: dict[int, list[tuple[int, int, int]]] = {}
        self._killed: list[np.ndarray] = []

    def __getattr__(self, name: str) -> np.ndarray:
        rings = self.__dict__.get("rings")
        if rings is not None and name in rings:
            return rings[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # ------------------------------------------------------------------ sizes and keys

    def __len__(self) -> int:
        """Alive (sampleable) transitions."""
        return self._live

    @property
    def filled(self) -> int:
        """Occupied transition slots, ``min(inserted, capacity)`` (alive or not)."""
        return min(self._inserted, self.capacity)

    @property
    def nbytes(self) -> int:
        """Bytes of the occupied slots of the frame ring and the transition ring."""
        per_frame = self.frames.itemsize * int(np.prod(self.frames.shape[1:])) + self.prev.itemsize
        per_slot = sum(a.itemsize * int(np.prod(a.shape[1:])) for a in (*self.rings.values(), self.oldest, self.alive))
        return per_frame * min(self._frames_written, self.frame_capacity) + per_slot * self.filled

    @property
    def inserted(self) -> int:
        """Total transitions ever inserted (= the next key)."""
        return self._inserted

    @property
    def frames_written(self) -> int:
        """Total frames ever stored (= the next global frame id)."""
        return self._frames_written

    def is_live(self, keys: np.ndarray) -> np.ndarray:
        """``[K]`` bool: key issued, its slot not overwritten since, and the transition alive
        (its frames not overwritten)."""
        k = np.asarray(keys, dtype=np.int64)
        ring = (k >= self._inserted - self.capacity) & (k >= 0) & (k < self._inserted)
        return ring & self.alive[np.mod(k, self.capacity)]

    def keys_of(self, slots: np.ndarray) -> np.ndarray:
        """``[K]`` int64: the key of the transition currently in each of ``slots``."""
        s = np.asarray(slots, dtype=np.int64)
        last = self._inserted - 1
        return last - np.mod(last - s, self.capacity)

    def take_killed(self) -> np.ndarray:
        """Slots (unique, int64) of transitions that died since the last call and are still
        dead: their priorities must be zeroed."""
        if not self._killed:
            return np.zeros(0, dtype=np.int64)
        slots = np.unique(np.concatenate(self._killed))
        self._killed.clear()
        return slots[~self.alive[slots]]

    # ------------------------------------------------------------------ adding

    def _cutoff(self, frames_written: int | None = None) -> int:
        """Oldest global frame id still in the ring."""
        fw = self._frames_written if frames_written is None else frames_written
        return max(0, fw - self.frame_capacity)

    def _segments_of(self, stream: int, start: int) -> list[tuple[int, int, int]]:
        segs = self._segments.get(stream)
        if segs is None or (segs and start < segs[-1][0] + segs[-1][2]):
            segs = []  # a new stream, or ids went backwards: a restarted actor
            self._segments[stream] = segs
        return segs

    @staticmethod
    def _resolve(ids: np.ndarray, start: int, base: int, count: int,
                 segs: list[tuple[int, int, int]]) -> np.ndarray:
        """Global ids of actor frame ids ``ids``: in this chunk (``start..start+count`` ->
        ``base..``) or in the stream's earlier segments; -1 where unknown."""
        x = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.full(x.shape, -1, dtype=np.int64)
        here = (x >= start) & (x < start + count)
        out[here] = base + (x[here] - start)
        rest = np.flatnonzero(~here)
        if rest.size and segs:
            table = np.array(segs, dtype=np.int64)  # [S, 3] sorted by actor start
            xr = x[rest]
            i = np.searchsorted(table[:, 0], xr, side="right") - 1
            ok = i >= 0
            i = np.maximum(i, 0)
            ok &= xr < table[i, 0] + table[i, 2]
            out[rest[ok]] = table[i[ok], 1] + (xr[ok] - table[i[ok], 0])
        return out

    def _chain(self, newest: np.ndarray, check: bool) -> tuple[np.ndarray, np.ndarray]:
        """``[N, k]`` global ids of the N stacks whose newest frames are ``newest`` (``[N]``,
        oldest first), and ``[N]`` bool: every frame of the stack is still in the ring (only
        computed with ``check``; else all True)."""
        g = np.asarray(newest, dtype=np.int64)
        k, f = self.stack, self.frame_capacity
        ids = np.empty((g.shape[0], k), dtype=np.int64)
        ids[:, k - 1] = g
        if check:
            lo, hi = self._cutoff(), self._frames_written
            ok = (g >= lo) & (g < hi)
        else:
            ok = np.ones(g.shape[0], dtype=bool)
        cur = g
        for j in range(k - 2, -1, -1):
            nxt = self.prev.take(np.mod(cur, f))
            if check:
                ok &= (nxt >= lo) & (nxt <= cur)
                nxt = np.where(ok, nxt, cur)
            ids[:, j] = nxt
            cur = nxt
        return ids, ok

    def _sweep(self, below: int) -> None:
        """Kill every alive transition whose oldest frame id is ``< below``."""
        n = self.filled
        dead = np.flatnonzero(self.alive[:n] & (self.oldest[:n] < below))
        if dead.size:
            self.alive[dead] = False
            self._live -= int(dead.size)
            self._killed.append(dead)
        self._swept_to = below
        cutoff = self._cutoff()
        for stream in [s for s, segs in self._segments.items() if not segs or segs[-1][1] + segs[-1][2] <= cutoff]:
            del self._segments[stream]  # streams whose frames are all gone

    def _from_stacks(self, chunk: Chunk, t: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """A whole chunk as (frames, prev, [newest per frame-stack field, ``[t, *lead]``]) with
        chunk-local frame indices: per item and lead position the ``k`` frames of each
        frame-stack field in turn (so the newest items' frames are the last to be
        overwritten)."""
        want = (t, *self.lead, *self.obs_shape)
        for name, _, _ in self._framed:
            arr = chunk.data.get(name)
            if arr is None or tuple(arr.shape) != want:
                shape = None if arr is None else tuple(arr.shape)
                raise ValueError(f"chunk.{name} has shape {shape}, replay expects {want}")
        k, nf, n = self.stack, len(self._framed), t * int(np.prod(self.lead, dtype=np.int64))
        stacks = np.stack([chunk.data[name].reshape(n, *self.obs_shape) for name, _, _ in self._framed], axis=1)
        frames = stacks.reshape(nf * n * k, *self.frame_shape)
        local = np.arange(nf * n * k, dtype=np.int64)
        prev = local - (local % k > 0)
        first = np.arange(n, dtype=np.int64) * (nf * k) + (k - 1)
        return frames, prev, [(first + j * k).reshape(t, *self.lead) for j in range(nf)]

    def add(self, chunk: Chunk) -> np.ndarray:
        """Store the chunk's frames and its T items (either chunk form).

        Returns:
            ``[T]`` int64 keys ``inserted, ..., inserted + T - 1``. Items whose frames cannot
            be resolved (or are already overwritten) are stored dead.

        Raises:
            ValueError: on shape mismatches.
        """
        t = check_rows(chunk, tuple(n for n, _ in self._plain))
        base = self._frames_written
        fb = chunk.frames
        if fb is None:
            frames, prev_l, newest_l = self._from_stacks(chunk, t)
            m = frames.shape[0]
            prev_g, newest_g = base + prev_l, [base + x for x in newest_l]
            segs: list[tuple[int, int, int]] | None = None
        else:
            frames = fb.frames
            if tuple(frames.shape[1:]) != self.frame_shape:
                raise ValueError(f"chunk frames have shape {tuple(frames.shape[1:])}, "
                                 f"replay expects {self.frame_shape}")
            m = frames.shape[0]
            if np.shape(fb.prev) != (m,):
                raise ValueError(f"chunk frame links have shape {np.shape(fb.prev)}, expected ({m},)")
            for _, col, _ in self._framed:
                arr = chunk.data.get(col)
                if arr is None or np.shape(arr) != (t, *self.lead):
                    raise ValueError(f"compact chunk.{col} has shape {None if arr is None else np.shape(arr)}, "
                                     f"expected {(t, *self.lead)}")
            start = int(fb.start)
            segs = self._segments_of(int(fb.stream), start)
            prev_g = self._resolve(fb.prev, start, base, m, segs)
            newest_g = [self._resolve(chunk.data[col], start, base, m, segs).reshape(t, *self.lead)
                        for _, col, _ in self._framed]

        # 1. Kill (ahead of time) the items whose frames the new frames overwrite.
        fw = base + m
        cutoff = self._cutoff(fw)
        if cutoff > self._swept_to:
            self._frames_written = fw  # so the sweep prunes the right streams
            self._sweep(cutoff + self._sweep_ahead)
        # 2. Write the frames (only the last F survive a chunk larger than the ring).
        ring_write(self.frames, base, frames)
        ring_write(self.prev, base, prev_g)
        self._frames_written = fw
        if fb is not None and segs is not None and m:
            segs.append((int(fb.start), base, m))
            if len(segs) > MAX_SEGMENTS:
                del segs[: len(segs) - MAX_SEGMENTS]
            self._segments[int(fb.stream)] = segs  # (the sweep may have pruned an idle stream)
        # 3. Items: alive iff every stack resolves to frames still in the ring.
        alive = np.ones(t, dtype=bool)
        oldest = np.full(t, np.iinfo(np.int64).max, dtype=np.int64)
        per = int(np.prod(self.lead, dtype=np.int64))  # stacks per item and field
        for g in newest_g:
            ids, ok = self._chain(g.reshape(-1), check=True)
            alive &= ok.reshape(t, per).all(axis=1)
            oldest = np.minimum(oldest, ids[:, 0].reshape(t, per).min(axis=1, initial=np.iinfo(np.int64).max))
        alive &= oldest >= self._swept_to
        start_key = self._inserted
        keys = np.arange(start_key, start_key + t, dtype=np.int64)
        if t == 0:
            return keys
        skip = max(0, t - self.capacity)
        n = t - skip
        pos = (start_key + skip) % self.capacity
        first = min(n, self.capacity - pos)
        cols = {name: chunk.data[name] for name, _ in self._plain}
        cols.update({gid: g for (_, _, gid), g in zip(self._framed, newest_g)})
        cols.update(oldest=oldest, alive=alive)
        for lo, hi, src_lo in ((pos, pos + first, skip), (0, n - first, skip + first)):
            if hi <= lo:
                continue
            self._live -= int(np.count_nonzero(self.alive[lo:hi]))
            for name, src in cols.items():
                self._column(name)[lo:hi] = src[src_lo : src_lo + hi - lo]
            self._live += int(np.count_nonzero(self.alive[lo:hi]))
        self._inserted += t
        dead = ~alive[skip:]
        if dead.any():
            self._killed.append((start_key + skip + np.flatnonzero(dead)) % self.capacity)
        return keys

    def _column(self, name: str) -> np.ndarray:
        return self.rings[name] if name in self.rings else getattr(self, name)

    # ------------------------------------------------------------------ reading

    def sample_uniform(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """``[B]`` slots drawn uniformly (with replacement) over the alive transitions:
        uniform over occupied slots, redrawing dead ones (rejection sampling, exact)."""
        n = self.filled
        slots = rng.integers(0, n, size=batch_size, dtype=np.int64)
        if self._live == n:
            return slots
        if self._live == 0:
            raise ValueError("cannot sample: no alive transitions")
        for _ in range(16):
            bad = np.flatnonzero(~self.alive[slots])
            if not bad.size:
                return slots
            slots[bad] = rng.integers(0, n, size=bad.size, dtype=np.int64)
        bad = np.flatnonzero(~self.alive[slots])
        if bad.size:  # mostly dead: draw the rest from the list of alive slots
            alive = np.flatnonzero(self.alive[:n])
            slots[bad] = alive[rng.integers(0, alive.size, size=bad.size)]
        return slots

    def stacks(self, newest: np.ndarray) -> np.ndarray:
        """``[*newest.shape, k, *frame_shape]`` stacks whose newest frames have global ids
        ``newest`` (frames must be in the ring, as they are for alive transitions)."""
        g = np.asarray(newest, dtype=np.int64)
        ids, _ = self._chain(g.reshape(-1), check=False)
        flat = np.mod(ids.reshape(-1), self.frame_capacity)
        return self.frames.take(flat, axis=0).reshape(*g.shape, self.stack, *self.frame_shape)

    def get(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Gather items by slot (alive slots), rebuilding their frame stacks: name ->
        ``[K, *field.shape]`` (fresh arrays), in spec order."""
        s = np.asarray(slots, dtype=np.int64)
        gids = {name: gid for name, _, gid in self._framed}
        return {name: self.stacks(self.rings[gids[name]].take(s, axis=0)) if name in gids
                else self.rings[name].take(s, axis=0) for name in self.spec.names}

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Occupied parts of the arrays as tensors (sharing memory) plus Python ints;
        loadable with ``torch.load(weights_only=True)``. Save before the next :meth:`add`."""
        n, nf = self.filled, min(self._frames_written, self.frame_capacity)
        segs = [(s, a, g, c) for s, lst in self._segments.items() for (a, g, c) in lst]
        out: dict[str, Any] = {
            "layout": "frames",
            "capacity": self.capacity,
            "frame_capacity": self.frame_capacity,
            "inserted": self._inserted,
            "frames_written": self._frames_written,
            "swept_to": self._swept_to,
            "frames": torch.from_numpy(self.frames[:nf]),
            "prev": torch.from_numpy(self.prev[:nf]),
            "segments": torch.tensor(segs, dtype=torch.int64).reshape(-1, 4),
        }
        for name in self._item_columns():
            out[name] = torch.from_numpy(self._column(name)[:n])
        return out

    def _item_columns(self) -> list[str]:
        return [*self.rings, "oldest", "alive"]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` output.

        Raises:
            ValueError: a checkpoint of a different layout, capacity or observation spec.
        """
        if state.get("layout") != "frames":
            raise ValueError("replay checkpoint holds stacked observations; this replay deduplicates frames "
                             "(replay.frame_dedup)")
        for key, mine in (("capacity", self.capacity), ("frame_capacity", self.frame_capacity)):
            if int(state[key]) != mine:
                raise ValueError(f"replay checkpoint has {key} {state[key]}, this replay {mine}")

        def arr(x: Any) -> np.ndarray:
            return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

        inserted, fw = int(state["inserted"]), int(state["frames_written"])
        n, nf = min(inserted, self.capacity), min(fw, self.frame_capacity)
        load_columns(state, [("frames", nf, self.frames), ("prev", nf, self.prev)]
                     + [(c, n, self._column(c)) for c in self._item_columns()])
        self._inserted, self._frames_written = inserted, fw
        self._swept_to = int(state["swept_to"])
        self._live = int(np.count_nonzero(self.alive[:n]))
        self._segments = {}
        for s, a, g, c in arr(state["segments"]).tolist():
            self._segments.setdefault(int(s), []).append((int(a), int(g), int(c)))
        self._killed.clear()


def _gid_name(column: str) -> str:
    """The transition ring of a frame-stack field's newest-frame ids: ``obs_frame`` ->
    ``obs_gid``, ``next_frame`` -> ``next_gid``."""
    return (column.removesuffix("_frame")) + "_gid"
