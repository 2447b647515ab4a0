"""DQN's items: n-step transitions ``(obs, action, reward, discount, next_obs)``.

``reward`` is the n-step discounted return sum_k gamma^k r_{t+k}; ``discount`` is gamma^m
for an m-step transition (m <= n), 0 where the episode *terminated* inside the window (a
*truncated* episode keeps gamma^m and bootstraps from ``next_obs``, its final observation).
Sutton & Barto 2018, eq. 7.1; Hessel et al. 2018, eq. 2.

:func:`transition_chunk` and :func:`transition_batch` build the generic
:class:`~distdqn.core.Chunk` and :class:`~distdqn.core.Batch` of these fields by name.
"""

from __future__ import annotations

import numpy as np
import torch

from distdqn.core import Batch, Chunk, Field, FrameBlock, ItemSpec

OBS_FRAME, NEXT_FRAME = "obs_frame", "next_frame"
"""Columns of a frame-deduplicated chunk: the actor frame id of the newest frame of
``obs`` / ``next_obs``."""


def transition_spec(obs_shape: tuple[int, ...], obs_dtype: np.dtype | type | str,
                    frame_dedup: bool = False) -> ItemSpec:
    """The item spec of n-step transitions of ``obs_shape`` observations.

    Args:
        obs_shape: one observation, e.g. ``(4,)`` or ``(4, 84, 84)``.
        obs_dtype: observation dtype.
        frame_dedup: declare ``obs`` and ``next_obs`` frame stacks (``(k, *frame)``
            observations whose frames the replay stores once).
    """
    shape, dt = tuple(int(d) for d in obs_shape), np.dtype(obs_dtype).name
    return ItemSpec.of(
        obs=Field(shape, dt, OBS_FRAME if frame_dedup else None),
        action=Field((), "int64"),
        reward=Field((), "float32"),
        discount=Field((), "float32"),
        next_obs=Field(shape, dt, NEXT_FRAME if frame_dedup else None),
    )


def transition_chunk(obs: np.ndarray | None, action: np.ndarray, reward: np.ndarray, discount: np.ndarray,
                     next_obs: np.ndarray | None, priority: np.ndarray | None = None, actor_id: int = 0,
                     param_version: int = 0, episode_returns: list[float] | None = None,
                     episode_lengths: list[int] | None = None, env_steps: int = 0, env_restarts: int = 0,
                     frames: FrameBlock | None = None, obs_frame: np.ndarray | None = None,
                     next_frame: np.ndarray | None = None, spec: ItemSpec | None = None) -> Chunk:
    """A :class:`~distdqn.core.Chunk` of T transitions from its fields (numpy, leading dim T).

    Whole form: ``obs`` and ``next_obs`` ``[T, *obs_shape]``. Frame-deduplicated form:
    ``obs`` and ``next_obs`` None, ``frames`` the new frames and ``obs_frame`` /
    ``next_frame`` ``[T]`` int64 the actor frame ids of each stack's newest frame.
    ``action`` ``[T]`` int64, ``reward`` / ``discount`` ``[T]`` float32 (module docstring).
    The spec is derived from ``obs`` (or ``frames``) when not given; for a compact chunk the
    stack size is then unknown to the chunk and its obs shape reads ``(-1, *frame_shape)``
    (a replay checks items against its own spec).
    """
    data = {"action": np.asarray(action), "reward": np.asarray(reward), "discount": np.asarray(discount)}
    if obs is not None:
        data = {"obs": obs, **data}
    if next_obs is not None:
        data["next_obs"] = next_obs
    if obs_frame is not None:
        data[OBS_FRAME] = obs_frame
    if next_frame is not None:
        data[NEXT_FRAME] = next_frame
    if spec is None and obs is not None:
        spec = transition_spec(obs.shape[1:], obs.dtype)
    elif spec is None and frames is not None:
        spec = transition_spec((-1, *frames.frames.shape[1:]), frames.frames.dtype, frame_dedup=True)
    return Chunk(data=data, spec=spec, priority=priority, actor_id=actor_id, param_version=param_version,
                 episode_returns=list(episode_returns or []), episode_lengths=list(episode_lengths or []),
                 env_steps=env_steps, env_restarts=env_restarts, frames=frames)


def transition_batch(obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor,
                     next_obs: torch.Tensor, weights: torch.Tensor, keys: np.ndarray,
                     probs: np.ndarray | None = None) -> Batch:
    """A :class:`~distdqn.core.Batch` of B transitions from its fields (torch, leading dim B)."""
    return Batch(data={"obs": obs, "action": action, "reward": reward, "discount": discount, "next_obs": next_obs},
                 keys=keys, weights=weights, probs=probs)
