"""The actor side of frame deduplication, for any agent whose items hold frame stacks.

With stacked-frame observations such as Atari's ``(4, 84, 84)`` (``FrameStackObservation``,
oldest frame first, "reset" padding), an actor numbers every new frame it observes (the
newest frame of each sub-env's observation after each step, and the reset frame at each
episode start) with its own *actor frame id*, and sends each frame once: the new frames
since the previous chunk, each with the id of its predecessor in the episode
(:class:`~distdqn.core.FrameBlock`); items then name the ids of their stacks' newest
frames. :class:`FrameNumbering` does that numbering. It checks every step that the
observations really are such stacks (``next_obs[:-1] == obs[1:]``, and a reset stack
repeats one frame), since the replay rebuilds them on that assumption.
"""

from __future__ import annotations

import numpy as np
import torch

from distdqn.core import FrameBlock


class FrameNumbering:
    """Actor frame ids for the stacked-frame observations of E sub-envs.

    Args:
        num_envs: E.
        obs_shape: ``(k, *frame_shape)``.
        obs_dtype: frame dtype.
        stream: the id space (one per actor instance; a restarted actor gets a new one).

    Attributes:
        ids: ``[E]`` int64 id of each sub-env's newest frame.

    Raises:
        ValueError: observations with fewer than 2 dimensions.
    """

    def __init__(self, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype, stream: int):
        if len(obs_shape) < 2:
            raise ValueError(f"frame_dedup needs stacked-frame observations, got shape {obs_shape}")
        self.frame_shape, self.dtype = tuple(obs_shape[1:]), np.dtype(obs_dtype)
        self.stream = int(stream)
        self._next = 0  # next actor frame id
        self.ids = np.zeros(num_envs, dtype=np.int64)
        self._frames: list[np.ndarray] = []
        self._prev: list[np.ndarray] = []
        self._start = 0  # actor frame id of the first frame not yet sent

    def _add(self, frames: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
        """Number ``frames`` ([m, *frame_shape]) with new ids and queue them for the next
        chunk; ``prev`` their predecessors' ids (None: episode starts, their own ids)."""
        m = frames.shape[0]
        ids = np.arange(self._next, self._next + m, dtype=np.int64)
        self._frames.append(np.array(frames, copy=True))
        self._prev.append(ids.copy() if prev is None else np.array(prev, dtype=np.int64))
        self._next += m
        return ids

    def episode_starts(self, stacks: np.ndarray) -> np.ndarray:
        """Queue the reset frames of ``stacks`` ([m, k, ...], each the reset frame repeated);
        returns their ids."""
        if not (stacks == stacks[:, -1:]).all():
            raise ValueError("replay.frame_dedup: a reset observation is not one frame repeated "
                             "(FrameStackObservation with 'reset' padding); set replay.frame_dedup=off")
        return self._add(stacks[:, -1], None)

    def step(self, obs: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """Queue the newest frame of every sub-env's ``next_obs``; returns their ids."""
        if not np.array_equal(next_obs[:, :-1], obs[:, 1:]):
            raise ValueError("replay.frame_dedup: observations are not frame stacks (next_obs[:-1] != obs[1:]); "
                             "set replay.frame_dedup=off")
        return self._add(next_obs[:, -1], self.ids)

    def take(self) -> FrameBlock:
        """The queued frames as a block; clears the queue."""
        start = self._start
        if self._frames:
            frames, prev = np.concatenate(self._frames), np.concatenate(self._prev)
        else:
            frames = np.zeros((0, *self.frame_shape), dtype=self.dtype)
            prev = np.zeros(0, dtype=np.int64)
        self._frames, self._prev = [], []
        self._start = self._next
        return FrameBlock(frames=frames, prev=prev, start=start, stream=self.stream)

    def state_dict(self) -> dict:
        """Numbering and the frames not yet sent (tensors and ints)."""
        frames, prev = (np.concatenate(self._frames), np.concatenate(self._prev)) if self._frames else \
            (np.zeros((0, *self.frame_shape), self.dtype), np.zeros(0, np.int64))
        return {"stream": self.stream, "next": self._next, "ids": torch.from_numpy(self.ids.copy()),
                "pending_start": self._start, "pending_frames": torch.from_numpy(frames),
                "pending_prev": torch.from_numpy(prev)}

    def load_state_dict(self, state: dict) -> None:
        self.stream, self._next = int(state["stream"]), int(state["next"])
        self.ids = state["ids"].numpy().copy()
        self._start = int(state["pending_start"])
        frames = state["pending_frames"].numpy().copy()
        self._frames = [frames] if frames.shape[0] else []
        self._prev = [state["pending_prev"].numpy().copy()] if frames.shape[0] else []
