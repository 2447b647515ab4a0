"""Data contracts every agent, role and runtime shares: the item spec, chunks of items,
sampled batches, what a learner step returns, and flat parameter vectors.

An agent declares what its items are (:class:`ItemSpec`: field name -> shape, dtype);
actors emit :class:`Chunk` objects of such items, the replay stores them by the spec and
hands out :class:`Batch` objects of the same fields. See ``docs/architecture.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Field:
    """One field of an item.

    Attributes:
        shape: per-item shape (the leading T of a chunk or B of a batch excluded).
        dtype: numpy dtype name (``"float32"``, ``"uint8"``, ``"int64"``...).
        frames: for a *frame-stack* field (shape ``(*lead, k, *frame_shape)``: the last
            ``k`` frames, oldest first, as ``FrameStackObservation`` builds them, for each
            of the ``lead`` positions): the name of the ``[T, *lead]`` int64 column that a
            frame-deduplicated chunk carries instead of the stacks (the actor frame id of
            each stack's newest frame, see :class:`FrameBlock`). None for ordinary fields.
        stack_axis: for a frame-stack field, the axis of ``k`` (``len(lead)``): 0 for one
            stack per item (a DQN transition's ``obs``), 1 for a sequence of stacks
            (R2D2's ``obs [T+1, k, H, W]``).
    """

    shape: tuple[int, ...]
    dtype: str
    frames: str | None = None
    stack_axis: int = 0

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


@dataclass(frozen=True)
class ItemSpec:
    """What one stored item is: an ordered set of named :class:`Field` s.

    Built by an agent (e.g. :func:`distdqn.agents.dqn.spec.transition_spec`); storage is
    allocated from it. Small and immutable, so it travels with every chunk.
    """

    fields: tuple[tuple[str, Field], ...]

    @staticmethod
    def of(**fields: Field) -> ItemSpec:
        """``ItemSpec.of(obs=Field(...), action=Field(...))``, in argument order."""
        return ItemSpec(tuple(fields.items()))

    def __getitem__(self, name: str) -> Field:
        for n, f in self.fields:
            if n == name:
                return f
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(n == name for n, _ in self.fields)

    def __iter__(self) -> Iterator[str]:
        return (n for n, _ in self.fields)

    def items(self) -> tuple[tuple[str, Field], ...]:
        return self.fields

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.fields)

    def frame_fields(self) -> tuple[tuple[str, Field], ...]:
        """The frame-stack fields (``Field.frames`` set), in order."""
        return tuple((n, f) for n, f in self.fields if f.frames is not None)


@dataclass
class FrameBlock:
    """The new frames an actor observed since its previous chunk (frame-deduplicated chunks).

    An actor with stacked-frame observations (Atari: ``FrameStackObservation``, each
    observation the last ``k`` 84x84 frames, oldest first) numbers every frame it sees with
    its own counter, the *actor frame id* (0, 1, 2, ... over the actor's life; one id per
    sub-env step plus one per episode start). A chunk carries each frame once, in id order,
    and per frame the id of the frame before it in the same sub-env's episode (its own id
    for the first frame of an episode). Following these links ``k - 1`` times from the
    newest frame of an observation gives the whole stack, with frames before the episode
    start replaced by the episode's first frame, exactly as ``FrameStackObservation``'s
    ``"reset"`` padding does.

    Attributes:
        frames: ``[F, *frame_shape]`` (uint8 84x84 for Atari), actor frame ids
            ``start, ..., start + F - 1``.
        prev: ``[F]`` int64 actor frame id of each frame's predecessor in its episode, or its
            own id at an episode start. May point into earlier chunks of the same stream.
        start: actor frame id of ``frames[0]``.
        stream: identifies the id space: one per actor instance (a restarted actor gets a
            new one); ids of different streams are unrelated.
    """

    frames: np.ndarray
    prev: np.ndarray
    start: int
    stream: int

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def _field_getattr(obj: Any, name: str) -> Any:
    """Attribute access to a record's named arrays: ``data[name]``; None for a field of the
    spec (or a frame-id column) that this record does not carry."""
    if name.startswith("__"):
        raise AttributeError(name)
    d = obj.__dict__
    data = d.get("data")
    if data is not None and name in data:
        return data[name]
    spec = d.get("spec")
    if spec is not None and (name in spec or any(f.frames == name for _, f in spec.items())):
        return None
    raise AttributeError(f"{type(obj).__name__} has no field {name!r}")


def _field_setattr(obj: Any, name: str, value: Any) -> None:
    """Assigning to a carried field replaces its array in ``data``; anything else is an attribute."""
    data = obj.__dict__.get("data")
    if data is not None and name in data:
        data[name] = value
    else:
        object.__setattr__(obj, name, value)


@dataclass
class Chunk:
    """T items from one actor: named numpy arrays with a leading dimension T, plus the
    item spec the agent's adder declares and the chunk's bookkeeping.

    Two forms, told apart by ``frames``:

    - *whole* (``frames is None``): ``data`` holds every field of the spec.
    - *frame-deduplicated* (spec fields with ``Field.frames`` set, ``replay.frame_dedup``):
      those fields are left out of ``data``; ``frames`` holds the new frames (each once)
      and ``data[field.frames]`` the ``[T, *lead]`` int64 actor frame id of each item's
      stacks' newest frames (``[T]`` for one stack per item; :class:`FrameBlock`). Only a
      frame-deduplicating replay can store it.

    Fields are also attributes: ``chunk.reward`` is ``chunk.data["reward"]`` (assigning to
    it replaces the array); a spec field the chunk does not carry reads as None.

    Attributes:
        data: name -> ``[T, *field.shape]`` array of ``field.dtype``.
        spec: the item spec (None for a chunk built without one, e.g. in tests).
        priority: optional ``[T]`` float32 initial priorities computed by the actor (Ape-X).
        actor_id: producing actor.
        param_version: parameter version the actor acted with.
        episode_returns: undiscounted returns of episodes that ended while producing the chunk.
        episode_lengths: their lengths in agent steps.
        env_steps: env steps (all sub-envs) taken while producing the chunk.
        env_restarts: envs recreated after raising, while producing the chunk.
        frames: frame-deduplicated form only: the new frames (:class:`FrameBlock`).
        epsilon: the exploration rate the actor acted with at the chunk's end (for metrics).
        dropped: items its producer had begun and threw away (a SEED env worker restarted:
            its open n-step windows); counted as produced and dropped, never inserted.
        stats: the producer's own metrics at the chunk's end (SEED's inference server:
            ``inference_batch``, ``inference_latency_ms_p50``/``_p99``, ``env_step_share``).
    """

    data: dict[str, np.ndarray]
    spec: ItemSpec | None = None
    priority: np.ndarray | None = None
    actor_id: int = 0
    param_version: int = 0
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    env_steps: int = 0
    env_restarts: int = 0
    frames: FrameBlock | None = None
    epsilon: float | None = None
    dropped: int = 0
    stats: dict[str, float] | None = None

    def __getattr__(self, name: str) -> Any:
        return _field_getattr(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        _field_setattr(self, name, value)

    def __len__(self) -> int:
        for a in self.data.values():
            return int(a.shape[0])
        return 0

    @property
    def compact(self) -> bool:
        """True for the frame-deduplicated form (``frames`` set)."""
        return self.frames is not None

    def nbytes(self) -> int:
        """Bytes of the chunk's arrays (what dominates its pickled size)."""
        arrays = [*self.data.values(), self.priority]
        if self.frames is not None:
            arrays += [self.frames.frames, self.frames.prev]
        return int(sum(a.nbytes for a in arrays if a is not None))

    def select(self, mask: np.ndarray) -> Chunk:
        """The items where ``mask`` ([T] bool) is True; bookkeeping kept. A compact chunk
        keeps all its frames (later items of the stream may need them)."""
        return replace(self, data={k: v[mask] for k, v in self.data.items()},
                       priority=None if self.priority is None else self.priority[mask])


def finite_mask(chunk: Chunk) -> np.ndarray:
    """``[T]`` bool: True where every floating field of the item (and its priority) is finite.

    Used at the actor -> replay boundary to refuse NaN/inf data. Integer fields are always
    finite. For a compact chunk the frames are checked too: floating frames with any NaN/inf
    refuse the whole chunk (a frame may belong to the stacks of several items, here and in
    later chunks).
    """
    t = len(chunk)
    ok = np.ones(t, dtype=bool)
    for a in chunk.data.values():
        if a.dtype.kind == "f":  # np.issubdtype costs more than the check itself at this size
            ok &= np.isfinite(a.reshape(t, -1)).all(axis=1) if a.ndim > 1 else np.isfinite(a)
    if chunk.frames is not None and chunk.frames.frames.dtype.kind == "f":
        if not np.isfinite(chunk.frames.frames).all():
            ok &= False
    if chunk.priority is not None:
        ok &= np.isfinite(chunk.priority)
    return ok


@dataclass
class Batch:
    """Items drawn from replay, as torch tensors (CPU; the learner moves them).

    Fields are also attributes: ``batch.obs`` is ``batch.data["obs"]``.

    Attributes:
        data: name -> ``[B, *field.shape]`` tensor.
        keys: ``[B]`` int64 numpy, addresses for :meth:`Replay.update_priorities`.
        weights: ``[B]`` float32 importance-sampling weights (all 1 for uniform sampling).
        probs: ``[B]`` float64 numpy sampling probabilities P(i) within the replay that drew
            the batch (prioritized sampling), else None; lets a sharded replay's client
            recompute the weights over all shards.
    """

    data: dict[str, torch.Tensor]
    keys: np.ndarray
    weights: torch.Tensor
    probs: np.ndarray | None = None

    def __getattr__(self, name: str) -> Any:
        return _field_getattr(self, name)

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def split(self, num_batches: int) -> list[Batch]:
        """The ``[num_batches * B]`` rows of a multi-batch draw (``Replay.sample(B,
        num_batches)``) as ``num_batches`` batches of ``B`` rows, in order (views, no copies).

        Raises:
            ValueError: the row count is not a multiple of ``num_batches``.
        """
        k = int(num_batches)
        m = len(self)
        if k < 1 or m % k:
            raise ValueError(f"cannot split {m} rows into {num_batches} equal batches")
        if k == 1:
            return [self]
        b = m // k

        def part(rows: slice) -> Batch:
            return Batch(data={n: t[rows] for n, t in self.data.items()}, keys=self.keys[rows],
                         weights=self.weights[rows], probs=None if self.probs is None else self.probs[rows])

        return [part(slice(i * b, (i + 1) * b)) for i in range(k)]


@dataclass
class LossOutput:
    """What an agent's loss function returns to the learner.

    Attributes:
        loss: scalar loss with grad.
        priorities: ``[B]`` detached new priorities (DQN: |TD error|), or None.
        metrics: scalar metrics computed on the way (DQN: ``q_mean``).
        name: the loss's metric name (DQN: ``td_loss``).
    """

    loss: torch.Tensor
    priorities: torch.Tensor | None
    metrics: dict[str, float]
    name: str = "td_loss"


@dataclass
class LearnOutput:
    """What one learner step returns.

    Attributes:
        metrics: scalar metrics (DQN: ``td_loss``, ``q_mean``, ``grad_norm``).
        priorities: ``[B]`` float32 numpy new priorities for the batch's keys (DQN: |TD
            error|), or None for an agent without prioritized replay.
        grads: flat float32 gradient (gradient mode only), else None.
    """

    metrics: dict[str, float]
    priorities: np.ndarray | None = None
    grads: torch.Tensor | None = None

    @property
    def td_abs(self) -> np.ndarray | None:
        """DQN's name for :attr:`priorities` (the |TD errors| they are made of)."""
        return self.priorities


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the update number."""


def flat_params(module: torch.nn.Module) -> np.ndarray:
    """The module's parameters as one flat float32 numpy vector in ``state_dict`` order."""
    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1).float().cpu() for p in module.state_dict().values()]).numpy()


def as_flat_tensor(flat: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A flat parameter vector as a tensor to read from (no copy where none is needed)."""
    if isinstance(flat, np.ndarray) and not flat.flags.writeable:
        # e.g. a zero-copy view of Ray's object store: only read here, so no copy is needed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(flat)
    return torch.as_tensor(flat)


def load_flat_params(module: torch.nn.Module, flat: np.ndarray | torch.Tensor) -> None:
    """Copy a flat vector (layout of :func:`flat_params`) into ``module`` in place.

    Raises:
        ValueError: if the vector's length does not match the module's parameter count.
    """
    src = as_flat_tensor(flat)
    total = sum(t.numel() for t in module.state_dict().values())
    if src.numel() != total:
        raise ValueError(f"flat parameter vector has {src.numel()} values, network needs {total}")
    offset = 0
    with torch.no_grad():
        for t in module.state_dict().values():
            n = t.numel()
            t.copy_(src[offset : offset + n].view_as(t))
            offset += n
