"""Small Gymnasium environments for tests and fault drills, registered as ``distdqn/...``.

Importing this module registers (once per process; a second import is a no-op):

========================  ==========================================================
id                        behaviour
========================  ==========================================================
``distdqn/NaNReward-v0``  CartPole-v1 whose reward is NaN on every ``nan_every``-th step
``distdqn/Crashing-v0``   CartPole-v1 whose ``step`` raises once per process, at the
                          ``crash_at``-th step taken by any Crashing env of the process
``distdqn/Chain-v0``      deterministic chain for n-step tests (see :class:`ChainEnv`)
``distdqn/NaNObs-v0``     CartPole-v1 whose observation holds a NaN on every 7th step
``distdqn/StackedFrames-v0`` cheap Atari look-alike: 84x84 uint8 frames that encode
                          (episode tag, step), short random episodes, stacked by
                          ``FrameStackObservation(4)`` (see :class:`FramesEnv`)
``distdqn/Grid-v0``       a 10x10 grid world to learn, observations 10x10x4 bool
                          stored channels last (:mod:`distdqn.testing.grid`)
``distdqn/CartPoleMasked-v0`` CartPole-v1 observed as [x, theta] only, float32 ``(2,)``
                          (:mod:`distdqn.testing.masked`)
========================  ==========================================================

All but the grid have a ``Discrete(2)`` action space and a ``Box`` observation space (CartPole ones:
float32 ``(4,)``; Chain: float32 ``(1,)``; StackedFrames: uint8 ``(4, 84, 84)``). :mod:`distdqn.envs` imports
this module when a ``distdqn/...`` id is first asked for, in the process that asks.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

__all__ = [
    "FRAME_STACKED_IDS",
    "TESTING_ENV_IDS",
    "ChainEnv",
    "CrashingCartPole",
    "FramesEnv",
    "NaNObsCartPole",
    "NaNRewardCartPole",
    "crash_state",
    "frame_info",
    "make_stacked_frames",
    "reset_crash_state",
]

_CARTPOLE_MAX_STEPS = 500  # CartPole-v1's time limit


class NaNRewardCartPole(CartPoleEnv):
    """CartPole-v1 dynamics; the reward is NaN on every ``nan_every``-th step.

    Steps are counted over the lifetime of the instance (across episodes), so with
    ``nan_every=10`` steps 10, 20, 30, ... (1-based) of this env give ``nan``; every
    other step gives CartPole's reward (1.0). Observations: float32 ``(4,)``.
    """

    def __init__(self, nan_every: int = 10, render_mode: str | None = None):
        if nan_every < 1:
            raise ValueError(f"nan_every must be >= 1, got {nan_every}")
        super().__init__(render_mode=render_mode)
        self.nan_every = int(nan_every)
        self.total_steps = 0

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        self.total_steps += 1
        if self.total_steps % self.nan_every == 0:
            reward = float("nan")
        return obs, float(reward), terminated, truncated, info


# Process-wide state of distdqn/Crashing-v0: steps taken by all Crashing envs of
# this process, and how many injected crashes already happened.
_crash_steps = 0
_crashes = 0


def crash_state() -> tuple[int, bool]:
    """``(steps taken by Crashing envs in this process, whether a crash happened)``."""
    return _crash_steps, _crashes > 0


def reset_crash_state() -> None:
    """Re-arm the process-wide crash counter of ``distdqn/Crashing-v0`` (for tests)."""
    global _crash_steps, _crashes
    _crash_steps = 0
    _crashes = 0


class CrashingCartPole(CartPoleEnv):
    """CartPole-v1 whose ``step`` raises ``RuntimeError("injected env crash")`` once (or
    ``crashes`` times).

    The crash happens on the ``crash_at``-th step (1-based) counted over *all*
    Crashing envs of the current process (a module-level counter, see
    :func:`crash_state`; if the counter is already past ``crash_at`` when this env
    is built, its next step crashes). After that one crash, no Crashing env of the process ever
    crashes again, so an actor that recreates the env carries on. With ``crashes`` > 1 the
    ``k``-th crash comes at step ``k * crash_at``. The step that
    crashes does not advance the CartPole state. Observations: float32 ``(4,)``.
    """

    def __init__(self, crash_at: int = 100, crashes: int = 1, render_mode: str | None = None):
        if crash_at < 1 or crashes < 1:
            raise ValueError(f"crash_at and crashes must be >= 1, got {crash_at}, {crashes}")
        super().__init__(render_mode=render_mode)
        self.crash_at, self.crashes = int(crash_at), int(crashes)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        global _crash_steps, _crashes
        _crash_steps += 1
        if _crashes < self.crashes and _crash_steps >= (_crashes + 1) * self.crash_at:
            _crashes += 1
            raise RuntimeError("injected env crash")
        return super().step(action)


class NaNObsCartPole(CartPoleEnv):
    """CartPole-v1 whose observation (float32 ``(4,)``) has ``obs[0] = nan`` on every
    7th step of the instance's lifetime (steps 7, 14, 21, ..., counted across
    episodes). The physics state itself stays finite."""

    nan_every = 7

    def __init__(self, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.total_steps = 0

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        self.total_steps += 1
        if self.total_steps % self.nan_every == 0:
            obs = np.array(obs, dtype=np.float32, copy=True)
            obs[0] = np.nan
        return obs, reward, terminated, truncated, info


class ChainEnv(gymnasium.Env[np.ndarray, np.int64]):
    """A deterministic chain of ``length`` steps for n-step return tests.

    - Observation: float32 ``(1,)``, the number of steps taken in the episode
      (``[0.]`` after reset, ``[k + 1.]`` after step ``k``).
    - Actions: ``Discrete(2)``, ignored.
    - Reward of step ``k`` (0-based): ``float(k + 1)``, i.e. 1, 2, 3, ...
    - End: after ``length`` steps the episode is *terminated*, or *truncated* when
      ``truncate=True`` (the env truncates by itself; no TimeLimit needed).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, length: int = 5, truncate: bool = False):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.length = int(length)
        self.truncate = bool(truncate)
        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Box(0.0, float(self.length), shape=(1,), dtype=np.float32)
        self._t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._t >= self.length:
            raise RuntimeError("ChainEnv.step() after the episode ended; call reset()")
        reward = float(self._t + 1)
        self._t += 1
        done = self._t >= self.length
        obs = np.array([float(self._t)], dtype=np.float32)
        return obs, reward, done and not self.truncate, done and self.truncate, {}


class FramesEnv(gymnasium.Env[np.ndarray, np.int64]):
    """Single 84x84 uint8 frames that say where they come from, for frame-stacking tests.

    - Reset draws (from the env's seeded ``np_random``) an episode *tag* in ``[1, 2^31)``
      and a length in ``[1, max_len]``. Frame ``t`` of the episode (``t = 0`` after reset)
      stores the tag in bytes ``[0, 0:4]`` and ``t`` in bytes ``[0, 4:6]`` (little-endian;
      :func:`frame_info` decodes them), and ``(tag + t) % 251`` in row 1.
    - Actions: ``Discrete(2)``; reward ``float(action)``.
    - After ``length`` steps the episode ends, *terminated* or *truncated* at random.

    Deterministic given the reset seed and the actions (exact actor resume works).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, max_len: int = 12, size: int = 84):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len, self.size = int(max_len), int(size)
        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Box(0, 255, shape=(self.size, self.size), dtype=np.uint8)
        self._tag, self._len, self._t = 0, 0, 0

    def _frame(self) -> np.ndarray:
        f = np.zeros((self.size, self.size), dtype=np.uint8)
        f[0, 0:4] = np.frombuffer(np.uint32(self._tag).tobytes(), dtype=np.uint8)
        f[0, 4:6] = np.frombuffer(np.uint16(self._t).tobytes(), dtype=np.uint8)
        f[1, :] = (self._tag + self._t) % 251
        return f

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._tag = int(self.np_random.integers(1, 2**31))
        self._len = int(self.np_random.integers(1, self.max_len + 1))
        self._t = 0
        return self._frame(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._t >= self._len:
            raise RuntimeError("FramesEnv.step() after the episode ended; call reset()")
        self._t += 1
        done = self._t >= self._len
        trunc = done and bool(self.np_random.random() < 0.5)
        return self._frame(), float(action), done and not trunc, trunc, {}


def frame_info(frame: np.ndarray) -> tuple[int, int]:
    """``(episode tag, step)`` encoded in a :class:`FramesEnv` frame."""
    f = np.ascontiguousarray(frame[0, 0:6])
    return int(f[0:4].view(np.uint32)[0]), int(f[4:6].view(np.uint16)[0])


def make_stacked_frames(frame_stack: int = 4, max_len: int = 12, size: int = 84) -> gymnasium.Env:
    """:class:`FramesEnv` stacked by ``FrameStackObservation(frame_stack)`` ("reset" padding,
    as the Atari pipeline of :func:`distdqn.envs.make_env`)."""
    return gymnasium.wrappers.FrameStackObservation(FramesEnv(max_len, size), frame_stack)


FRAME_STACKED_IDS: tuple[str, ...] = ("distdqn/StackedFrames-v0",)
"""Non-Atari ids whose observations are ``FrameStackObservation`` stacks of
``EnvConfig.frame_stack`` (default 4) frames, so ``replay.frame_dedup: auto`` applies."""


TESTING_ENV_IDS: tuple[str, ...] = (
    "distdqn/NaNReward-v0",
    "distdqn/Crashing-v0",
    "distdqn/Chain-v0",
    "distdqn/NaNObs-v0",
    "distdqn/StackedFrames-v0",
    "distdqn/Grid-v0",
    "distdqn/CartPoleMasked-v0",
)
"""Ids registered by this module."""


def _register() -> None:
    table: list[tuple[str, str, int | None]] = [
        ("distdqn/NaNReward-v0", "NaNRewardCartPole", _CARTPOLE_MAX_STEPS),
        ("distdqn/Crashing-v0", "CrashingCartPole", _CARTPOLE_MAX_STEPS),
        ("distdqn/Chain-v0", "ChainEnv", None),
        ("distdqn/NaNObs-v0", "NaNObsCartPole", _CARTPOLE_MAX_STEPS),
        ("distdqn/StackedFrames-v0", "make_stacked_frames", None),
        ("distdqn/Grid-v0", "distdqn.testing.grid:GridGoalEnv", None),
        ("distdqn/CartPoleMasked-v0", "distdqn.testing.masked:MaskedCartPole", _CARTPOLE_MAX_STEPS),
    ]
    for env_id, cls_name, max_steps in table:
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point=cls_name if ":" in cls_name else f"distdqn.testing.envs:{cls_name}",
            max_episode_steps=max_steps,
            # The passive checker warns on NaN rewards/observations, which are the point here.
            disable_env_checker=True,
        )


_register()
