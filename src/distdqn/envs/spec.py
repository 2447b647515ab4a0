"""What distdqn needs to know about an environment, and the error for one it cannot use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

__all__ = ["EXAMPLE_IDS", "EnvSpaces", "EnvSpecError", "check_space_pair", "is_atari"]

EXAMPLE_IDS = "e.g. 'CartPole-v1' or 'ALE/Pong-v5'"

class EnvSpecError(ValueError):
    """An environment id that is not registered, or one whose spaces distdqn cannot use
    (it needs a ``Discrete`` action space starting at 0 and a ``Box`` observation space).
    The message is one line and names the id."""


@dataclass(frozen=True)
class EnvSpaces:
    """What the networks and the replay need to know about an environment.

    Attributes:
        obs_shape: shape of one observation, e.g. ``(4,)`` for CartPole-v1 or
            ``(4, 84, 84)`` (frame_stack, height, width) for preprocessed Atari.
        obs_dtype: numpy dtype of observations (float32 for CartPole, uint8 for Atari).
        num_actions: ``n`` of the ``Discrete(n)`` action space; actions are ``0..n-1``.
    """

    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int


def is_atari(env_id: str) -> bool:
    """True for ALE ids: ``ALE/...`` (v5) or legacy ``...NoFrameskip...`` ids."""
    return env_id.startswith("ALE/") or "NoFrameskip" in env_id


def check_space_pair(obs: spaces.Space, act: spaces.Space, env_id: str) -> None:
    """Raises :class:`EnvSpecError` unless ``act`` is ``Discrete`` from 0 and ``obs`` a ``Box``."""
    if not isinstance(act, spaces.Discrete) or int(act.start) != 0:
        raise EnvSpecError(
            f"environment {env_id!r} has action space {act}; the dqn agent needs a Discrete "
            f"action space (starting at 0), {EXAMPLE_IDS}"
        )
    if not isinstance(obs, spaces.Box):
        raise EnvSpecError(
            f"environment {env_id!r} has observation space {obs}; distdqn needs a Box "
            f"observation space, {EXAMPLE_IDS}"
        )
