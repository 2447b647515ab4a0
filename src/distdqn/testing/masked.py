"""Velocity-masked CartPole (``distdqn/CartPoleMasked-v0``): CartPole-v1 whose observation
is ``[x, theta]`` only (float32 ``(2,)``), the cart and pole velocities left out. A
feed-forward policy cannot tell which way the pole moves; a recurrent one can (R2D2's
test task, as RLlib's "stateless CartPole")."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

KEEP = np.array([0, 2])
"""Cart position and pole angle."""


class MaskedCartPole(CartPoleEnv):
    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        high = self.observation_space.high[KEEP]
        self.observation_space = gymnasium.spaces.Box(-high, high, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=options)
        return np.asarray(obs, dtype=np.float32)[KEEP], info

    def step(self, action: int):
        obs, reward, terminated, truncated, info = super().step(action)
        return np.asarray(obs, dtype=np.float32)[KEEP], reward, terminated, truncated, info
