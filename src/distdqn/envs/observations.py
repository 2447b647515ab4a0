"""Observations as distdqn's networks and replay take them, converted once, here: a Box
of float32 (or uint8, for images) with images channels first.

- A space that is not a Box (Discrete, MultiDiscrete, MultiBinary, Tuple, Dict of those)
  is flattened with Gymnasium's ``FlattenObservation`` (one-hot for Discrete); a space
  flattening does not turn into a Box (Graph, Sequence) is refused, naming it.
- A Box of any other dtype than uint8 and float32 (bool grids, integer counts, float64)
  becomes float32.
- A 3-D Box stored channels last (height, width, channels: ``env.channels_last``; ``auto``
  when the last axis is smaller than the other two) is transposed to channels first.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from distdqn.config import EnvConfig
from distdqn.envs.spec import EnvSpecError

__all__ = ["adapt_observations", "channels_last"]


def channels_last(shape: tuple[int, ...], setting: str) -> bool:
    """Whether a 3-D observation of ``shape`` is stored channels last (``env.channels_last``)."""
    if len(shape) != 3 or setting == "false":
        return False
    if setting == "true":
        return True
    return shape[2] < shape[0] and shape[2] < shape[1]


class _Transform(gymnasium.ObservationWrapper):
    """Applies ``fn`` to every observation and declares ``space``."""

    def __init__(self, env: gymnasium.Env, fn: Any, space: spaces.Box):
        super().__init__(env)
        self._fn = fn
        self.observation_space = space

    def observation(self, observation: Any) -> np.ndarray:
        return self._fn(observation)


def adapt_observations(env: gymnasium.Env, cfg: EnvConfig) -> gymnasium.Env:
    """``env`` with its observations as described in the module docstring.

    Raises:
        EnvSpecError: an observation space flattening does not cover (the env is not closed).
    """
    space = env.observation_space
    if not isinstance(space, spaces.Box):
        try:
            flat = spaces.flatten_space(space)
        except Exception:  # noqa: BLE001 - a space with no fixed-size flat form
            flat = None
        if not isinstance(flat, spaces.Box):
            raise EnvSpecError(
                f"environment {cfg.id!r} has observation space {space}; distdqn takes a Box, or a space "
                "gymnasium.spaces.flatten turns into one (Discrete, MultiDiscrete, MultiBinary, Tuple, Dict)")
        env = gymnasium.wrappers.FlattenObservation(env)
        space = env.observation_space
    shape = tuple(int(d) for d in space.shape)
    last = channels_last(shape, cfg.channels_last)
    dtype = space.dtype if space.dtype in (np.dtype(np.uint8), np.dtype(np.float32)) else np.dtype(np.float32)
    if not last and dtype == space.dtype:
        return env
    low, high = np.asarray(space.low), np.asarray(space.high)
    if last:
        low, high = np.moveaxis(low, -1, 0), np.moveaxis(high, -1, 0)
    new = spaces.Box(low.astype(dtype), high.astype(dtype), dtype=dtype)

    def convert(obs: Any) -> np.ndarray:
        a = np.asarray(obs)
        if last:
            a = np.moveaxis(a, -1, 0)
        return np.ascontiguousarray(a, dtype=dtype)

    return _Transform(env, convert, new)
