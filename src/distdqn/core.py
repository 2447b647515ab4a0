"""Data contracts and the small interfaces every role and runtime shares.

See ``docs/architecture.md`` for how the roles are wired.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch


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


@dataclass
class TransitionChunk:
    """A chunk of T n-step transitions from one actor (numpy, leading dim T).

    Two forms:

    - *stacked* (every env; ``frames is None``): ``obs`` and ``next_obs`` hold whole
      observations.
    - *frame-deduplicated* (stacked-frame observations, ``replay.frame_dedup``): ``obs`` and
      ``next_obs`` are None; ``frames`` holds the new frames (each frame once) and
      ``obs_frame`` / ``next_frame`` the actor frame ids of the newest frame of each
      transition's observations (see :class:`FrameBlock`). About ``1 / (2 k)`` of the
      stacked form's bytes. Only a frame-deduplicating replay can store it.

    Attributes:
        obs: ``[T, *obs_shape]`` observation dtype (float32 or uint8), or None (compact form).
        action: ``[T]`` int64.
        reward: ``[T]`` float32, the n-step discounted return sum_k gamma^k r_{t+k}.
        discount: ``[T]`` float32, gamma^m for an m-step transition (m <= n); 0 where the
            episode *terminated* inside the window. A *truncated* episode keeps gamma^m and
            bootstraps from ``next_obs``, its final observation.
        next_obs: ``[T, *obs_shape]``, the observation m steps later, or None (compact form).
        priority: optional ``[T]`` float32 initial |TD error| computed by the actor (Ape-X).
        actor_id: producing actor.
        param_version: parameter version the actor acted with.
        episode_returns: undiscounted returns of episodes that ended while producing the chunk.
        episode_lengths: their lengths in agent steps.
        env_steps: env steps (all sub-envs) taken while producing the chunk.
        env_restarts: envs recreated after raising, while producing the chunk.
        frames: compact form only: the new frames (:class:`FrameBlock`).
        obs_frame: compact form only: ``[T]`` int64 actor frame id of the newest frame of ``obs``.
        next_frame: compact form only: ``[T]`` int64 actor frame id of the newest frame of ``next_obs``.
    """

    obs: np.ndarray | None
    action: np.ndarray
    reward: np.ndarray
    discount: np.ndarray
    next_obs: np.ndarray | None
    priority: np.ndarray | None = None
    actor_id: int = 0
    param_version: int = 0
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    env_steps: int = 0
    env_restarts: int = 0
    frames: FrameBlock | None = None
    obs_frame: np.ndarray | None = None
    next_frame: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.action.shape[0])

    @property
    def compact(self) -> bool:
        """True for the frame-deduplicated form (``frames`` set, no stacked observations)."""
        return self.frames is not None

    def nbytes(self) -> int:
        """Bytes of the chunk's arrays (what dominates its pickled size)."""
        arrays = [self.obs, self.action, self.reward, self.discount, self.next_obs, self.priority,
                  self.obs_frame, self.next_frame]
        if self.frames is not None:
            arrays += [self.frames.frames, self.frames.prev]
        return int(sum(a.nbytes for a in arrays if a is not None))

    def select(self, mask: np.ndarray) -> "TransitionChunk":
        """The transitions where ``mask`` ([T] bool) is True; metadata kept. A compact chunk
        keeps all its frames (later transitions of the stream may need them)."""

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[mask]

        return TransitionChunk(
            obs=pick(self.obs),
            action=self.action[mask],
            reward=self.reward[mask],
            discount=self.discount[mask],
            next_obs=pick(self.next_obs),
            priority=pick(self.priority),
            actor_id=self.actor_id,
            param_version=self.param_version,
            episode_returns=self.episode_returns,
            episode_lengths=self.episode_lengths,
            env_steps=self.env_steps,
            env_restarts=self.env_restarts,
            frames=self.frames,
            obs_frame=pick(self.obs_frame),
            next_frame=pick(self.next_frame),
        )


def finite_mask(chunk: TransitionChunk) -> np.ndarray:
    """``[T]`` bool: True where obs, next_obs, reward, discount (and priority) are all finite.

    Used at the actor -> replay boundary to refuse NaN/inf data. For a compact chunk the
    frames are checked instead of the observations: integer frames (Atari uint8) are always
    finite; floating frames with any NaN/inf refuse the whole chunk (a frame may belong to
    the stacks of several transitions, here and in later chunks).
    """
    ok = np.isfinite(chunk.reward) & np.isfinite(chunk.discount)
    t = len(chunk)
    if chunk.obs is not None and np.issubdtype(chunk.obs.dtype, np.floating):
        ok &= np.isfinite(chunk.obs.reshape(t, -1)).all(axis=1)
    if chunk.next_obs is not None and np.issubdtype(chunk.next_obs.dtype, np.floating):
        ok &= np.isfinite(chunk.next_obs.reshape(t, -1)).all(axis=1)
    if chunk.frames is not None and np.issubdtype(chunk.frames.frames.dtype, np.floating):
        if not np.isfinite(chunk.frames.frames).all():
            ok &= False
    if chunk.priority is not None:
        ok &= np.isfinite(chunk.priority)
    return ok


@dataclass
class SampledBatch:
    """A batch drawn from replay, as torch tensors (CPU; the learner moves them).

    Attributes:
        obs: ``[B, *obs_shape]``; action ``[B]`` int64; reward ``[B]`` float32;
        discount: ``[B]`` float32; next_obs ``[B, *obs_shape]``.
        weights: ``[B]`` float32 importance-sampling weights (all 1 for uniform replay).
        keys: ``[B]`` int64 numpy, addresses for :meth:`Replay.update_priorities`.
        probs: ``[B]`` float64 numpy sampling probabilities P(i) within the replay that drew
            the batch (prioritized replay), else None; lets a sharded replay's client
            recompute the weights over all shards.
    """

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    next_obs: torch.Tensor
    weights: torch.Tensor
    keys: np.ndarray
    probs: np.ndarray | None = None

    def split(self, num_batches: int) -> list[SampledBatch]:
        """The ``[num_batches * B]`` rows of a multi-batch draw (``Replay.sample(B,
        num_batches)``) as ``num_batches`` batches of ``B`` rows, in order (views, no copies).

        Raises:
            ValueError: the row count is not a multiple of ``num_batches``.
        """
        k = int(num_batches)
        m = int(self.keys.shape[0])
        if k < 1 or m % k:
            raise ValueError(f"cannot split {m} rows into {num_batches} equal batches")
        if k == 1:
            return [self]
        b = m // k

        def part(rows: slice) -> SampledBatch:
            return SampledBatch(obs=self.obs[rows], action=self.action[rows], reward=self.reward[rows],
                                discount=self.discount[rows], next_obs=self.next_obs[rows],
                                weights=self.weights[rows], keys=self.keys[rows],
                                probs=None if self.probs is None else self.probs[rows])

        return [part(slice(i * b, (i + 1) * b)) for i in range(k)]


@dataclass
class LearnOutput:
    """What one learner step returns.

    Attributes:
        td_abs: ``[B]`` float32 numpy |TD error| for priority updates.
        metrics: scalar metrics (``td_loss``, ``q_mean``, ``grad_norm``).
        grads: flat float32 gradient (gradient mode only), else None.
    """

    td_abs: np.ndarray
    metrics: dict[str, float]
    grads: torch.Tensor | None = None


class VariableSource(Protocol):
    """Something that hands out versioned flat parameters."""

    def get_params(self, newer_than: int = -1) -> tuple[int, np.ndarray] | None: ...


class ReplayClient(Protocol):
    def insert(self, chunk: TransitionChunk) -> None: ...

    def sample(self, batch_size: int) -> SampledBatch: ...

    def update_priorities(self, keys: np.ndarray, td_abs: np.ndarray) -> None: ...


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


Metrics = dict[str, Any]
