"""``distdqn/Grid-v0``: a small grid world with image observations stored channels last, as
board-game and grid-world packages give them: 10x10x4 bool.

The agent (channel 0) walks the four ways on a 10x10 grid with a wall (channel 2) in the
middle; it must reach the goal (channel 1). Channel 3 marks the cells it visited in this
episode. Reaching the goal gives +1 and ends the episode (*terminated*); every step costs
0.01; ``max_steps`` steps end it *truncated*. At each reset the env's seeded generator puts
the agent on a free cell of the left half and the goal in the top-right or the
bottom-right corner, so a policy must read both from the image to do better than chance
(a random walk's return is about -0.4; the best return is about 0.87).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

_MOVES = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])


class GridGoalEnv(gymnasium.Env[np.ndarray, np.int64]):
    """See the module docstring.

    Args:
        size: the grid's side (>= 6).
        max_steps: steps before truncation.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, size: int = 10, max_steps: int = 40):
        if size < 6:
            raise ValueError(f"size must be >= 6, got {size}")
        self.size, self.max_steps = int(size), int(max_steps)
        self.observation_space = spaces.Box(0, 1, shape=(self.size, self.size, 4), dtype=bool)
        self.action_space = spaces.Discrete(4)
        self.walls = np.zeros((self.size, self.size), dtype=bool)
        mid = self.size // 2
        self.walls[mid - 2 : mid + 2, mid] = True  # a short wall to walk around
        self._pos = np.zeros(2, dtype=np.int64)
        self._goal = np.zeros(2, dtype=np.int64)
        self._visited = np.zeros((self.size, self.size), dtype=bool)
        self._t = 0

    def _free_cell(self, cols: tuple[int, int]) -> np.ndarray:
        while True:
            cell = np.array([self.np_random.integers(self.size), self.np_random.integers(*cols)])
            if not self.walls[tuple(cell)]:
                return cell

    def _obs(self) -> np.ndarray:
        obs = np.zeros((self.size, self.size, 4), dtype=bool)
        obs[self._pos[0], self._pos[1], 0] = True
        obs[self._goal[0], self._goal[1], 1] = True
        obs[:, :, 2] = self.walls
        obs[:, :, 3] = self._visited
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._pos = self._free_cell((0, self.size // 2))
        corner = self.size - 1 if self.np_random.integers(2) else 0
        self._goal = np.array([corner, self.size - 1])
        self._visited[...] = False
        self._visited[tuple(self._pos)] = True
        self._t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        nxt = np.clip(self._pos + _MOVES[int(action)], 0, self.size - 1)
        if not self.walls[tuple(nxt)]:
            self._pos = nxt
        self._visited[tuple(self._pos)] = True
        self._t += 1
        reached = bool((self._pos == self._goal).all())
        reward = 1.0 if reached else -0.01
        return self._obs(), reward, reached, not reached and self._t >= self.max_steps, {}
