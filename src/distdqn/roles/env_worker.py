"""SEED RL's env worker: environments only, no network (Espeholt et al. 2020, "SEED RL:
Scalable and Efficient Deep-RL with Accelerated Central Inference", sec. 3). Each step it
takes actions from the inference server and gives back what the envs did; the server acts
and builds the items (:mod:`distdqn.roles.inference`). No transport code here.

Double buffering (``inference.splits: 2``, Sample Factory's ``worker_num_splits``): the
worker's envs are two groups ("halves") stepped alternately, so that one half steps while
the other waits for its actions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from distdqn.config import EnvConfig
from distdqn.roles.env_runner import EnvRunner


@dataclass
class HalfStep:
    """What one half's H sub-envs did with their actions.

    Attributes:
        next_obs: ``[H, *obs_shape]`` the observations after the step (the final ones of
            episodes that ended); after a restart, every sub-env's first observation.
        reward: ``[H]`` float64.
        terminated, truncated: ``[H]`` bool (Gymnasium's episode ends).
        reset_obs: ``[H, *obs_shape]`` whose rows of ended episodes are their new first
            observations; None when no episode ended.
        returns, lengths: undiscounted returns and lengths (agent steps) of the episodes
            that ended.
        restarted: the env raised and was recreated (every sub-env reset; the step is lost).
    """

    next_obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    reset_obs: np.ndarray | None = None
    returns: list[float] = dataclasses.field(default_factory=list)
    lengths: list[int] = dataclasses.field(default_factory=list)
    restarted: bool = False


def split_sizes(num_envs: int, splits: int) -> list[int]:
    """Sub-envs per half: ``splits`` equal groups of ``num_envs``.

    Raises:
        ValueError: ``num_envs`` is not a multiple of ``splits``.
    """
    if splits < 1 or num_envs % splits:
        raise ValueError(f"{num_envs} envs cannot be split into {splits} equal groups")
    return [num_envs // splits] * splits


class EnvWorker:
    """``env.envs_per_actor`` sub-envs as ``splits`` halves, each an
    :class:`~distdqn.roles.env_runner.EnvRunner` (recreated when it raises, as an actor's).

    Args:
        env_cfg: which env and how many copies.
        splits: halves (1 or 2).
        rng: the worker's generator (reset seeds).
        worker_id: for log messages.
    """

    def __init__(self, env_cfg: EnvConfig, splits: int, rng: np.random.Generator, worker_id: int):
        sizes = split_sizes(env_cfg.envs_per_actor, splits)
        half_cfg = dataclasses.replace(env_cfg, envs_per_actor=sizes[0])
        self.halves = [EnvRunner(half_cfg, rng, owner=f"env worker {worker_id} half {h}") for h in range(splits)]
        self.sizes = sizes
        self.obs_shape, self.obs_dtype = self.halves[0].obs_shape, self.halves[0].obs_dtype

    @property
    def env_steps(self) -> int:
        return sum(r.env_steps for r in self.halves)

    def reset(self, half: int) -> np.ndarray:
        """Reset every sub-env of ``half`` with new seeds; ``[H, *obs_shape]``."""
        return self.halves[half].reset_all()

    def step(self, half: int, actions: np.ndarray) -> HalfStep:
        """Step ``half``'s sub-envs with ``actions`` (``[H]`` int64) and reset those whose
        episode ended."""
        r = self.halves[half]
        out = r.step(actions)
        if out is None:
            obs = r.obs_after_restart
            zeros = np.zeros(len(obs), dtype=bool)
            return HalfStep(obs, np.zeros(len(obs)), zeros, zeros, restarted=True)
        next_obs, reward, terminated, truncated, info = out
        done = np.logical_or(terminated, truncated)
        step = HalfStep(next_obs, np.asarray(reward, dtype=np.float64), np.asarray(terminated, dtype=bool),
                        np.asarray(truncated, dtype=bool))
        if done.any():
            step.returns, step.lengths = r.episode_stats(info, done)
            step.reset_obs = r.reset_done(done)
        return step

    def close(self) -> None:
        for r in self.halves:
            r.close()


class HalfLink:
    """The runner a server-side actor sees for one half (the interface of
    :class:`~distdqn.roles.env_runner.EnvRunner` that :class:`~distdqn.roles.actor.Actor`
    uses): :meth:`step` returns the half's result last received (:attr:`pending`).

    Args:
        first_obs: ``[H, *obs_shape]`` the half's first observations.
    """

    def __init__(self, first_obs: np.ndarray):
        self.num_envs = len(first_obs)
        self.obs_shape, self.obs_dtype = tuple(first_obs.shape[1:]), first_obs.dtype
        self.steps = self.env_steps = self.env_restarts = 0
        self.pending: HalfStep | None = None
        self.obs_after_restart: np.ndarray | None = None
        self._first = first_obs

    def reset_all(self) -> np.ndarray:
        return self._first

    def step(self, actions: np.ndarray) -> tuple | None:
        r = self.pending
        assert r is not None, "no result received for this half"
        if r.restarted:
            self.env_restarts += 1
            self.obs_after_restart = r.next_obs
            return None
        self.steps += 1
        self.env_steps += self.num_envs
        return r.next_obs, r.reward, r.terminated, r.truncated, {}

    def episode_stats(self, info: dict, done: np.ndarray) -> tuple[list[float], list[int]]:
        return self.pending.returns, self.pending.lengths

    def reset_done(self, done: np.ndarray) -> np.ndarray:
        return self.pending.reset_obs

    def close(self) -> None:
        pass
