"""A vector of sub-envs that resets itself, with the seeding that makes exact resume
possible and the recovery of envs that raise. Used by the :class:`~distdqn.roles.actor.Actor`;
no acting or transport here.

Sub-envs run with Gymnasium's ``AutoresetMode.DISABLED``: the runner resets finished ones
itself. A reset takes a seed drawn from the owner's generator when the sub-env starts, and
again at the first episode end :data:`RESEED_STEPS` or more vector steps after its last
seeded reset; other resets are unseeded and continue the env's own RNG (a seeded reset
builds a new generator, a large part of a short CartPole episode's cost). An env's state is
so a function of (last seed, actions since that reset, with an unseeded reset after each
episode end): :meth:`EnvRunner.restore` replays them. With ``env.backend: envpool`` only
the first seed is used (:mod:`distdqn.envs.envpool`) and a restored runner starts new
episodes instead.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from distdqn.config import EnvConfig
from distdqn.envs import is_atari, make_vector_env

log = logging.getLogger(__name__)

RESEED_STEPS = 1_000
"""Vector steps after a sub-env's seeded reset from which its next episode end reseeds it:
bounds the actions an exact resume replays per sub-env."""


class EnvRunner:
    """E sub-envs stepped in lock-step, reset and reseeded by the runner.

    Args:
        env_cfg: which env and how many copies (``envs_per_actor``).
        rng: the owner's generator (reset seeds are drawn from it).
        owner: for log messages, e.g. ``"actor 3"``.

    Attributes:
        steps: vector steps taken; ``env_steps``: sub-env steps; ``env_restarts``: envs
            recreated after raising.
        obs_shape, obs_dtype, num_actions: of one sub-env.
    """

    def __init__(self, env_cfg: EnvConfig, rng: np.random.Generator, owner: str):
        self.env_cfg, self.rng, self.owner = env_cfg, rng, owner
        self.num_envs = env_cfg.envs_per_actor
        self.steps = 0
        self.env_steps = 0
        self.env_restarts = 0
        # RecordEpisodeStatistics sits on the raw env: for Atari it counts emulator frames.
        self.frames_per_step = env_cfg.frame_skip if is_atari(env_cfg.id) else 1
        self._make_envs()

    def _make_envs(self) -> None:
        self.envs = make_vector_env(self.env_cfg, self.num_envs)
        space = self.envs.single_observation_space
        self.obs_shape, self.obs_dtype = tuple(space.shape), space.dtype
        self.num_actions = int(self.envs.single_action_space.n)
        self._episode_seed = np.zeros(self.num_envs, dtype=np.int64)  # seed of the last seeded reset
        # Actions since each sub-env's last seeded reset (exact resume replays them): one [E]
        # array per vector step, from vector step `_log_base` on; sub-env i was last reset
        # with a seed at vector step `_episode_start[i]`.
        self._action_log: list[np.ndarray] = []
        self._log_base = self.steps
        self._episode_start = np.full(self.num_envs, self.steps, dtype=np.int64)

    def _new_seeds(self, mask: np.ndarray, force: bool = True) -> list[int | None]:
        """Seeds for resetting the ``mask`` sub-envs: a new one where ``force`` or the last
        seeded reset is :data:`RESEED_STEPS` vector steps old, else None (unseeded)."""
        seeds: list[int | None] = [None] * self.num_envs
        if not force:
            mask = mask & (self.steps - self._episode_start >= RESEED_STEPS)
            if not mask.any():  # most episode ends: nothing to seed, nothing to trim
                return seeds
        for i in np.flatnonzero(mask):
            s = int(self.rng.integers(2**31 - 1))
            self._episode_seed[i] = s
            seeds[i] = s
        self._episode_start[mask] = self.steps
        drop = int(self._episode_start.min()) - self._log_base
        if drop > 256:  # steps no open episode needs any more
            del self._action_log[:drop]
            self._log_base += drop
        return seeds

    def reset_all(self) -> np.ndarray:
        """Reset every sub-env with a new seed; ``[E, *obs_shape]`` observations."""
        obs, _ = self.envs.reset(seed=self._new_seeds(np.ones(self.num_envs, dtype=bool)))
        return np.array(obs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, Any, np.ndarray, np.ndarray, dict] | None:
        """One vector step: ``(next_obs, reward, terminated, truncated, info)``, or None when
        the env raised; it was then recreated (``env_restarts``) and every sub-env reset, and
        :attr:`obs_after_restart` holds the new observations."""
        try:
            next_obs, reward, terminated, truncated, info = self.envs.step(actions)
        except Exception as exc:  # noqa: BLE001 - any env failure is recoverable by recreating it
            self._recreate(exc)
            return None
        self.steps += 1
        self.env_steps += self.num_envs
        self._action_log.append(actions)
        return np.asarray(next_obs), reward, terminated, truncated, info

    def _recreate(self, exc: BaseException) -> None:
        self.env_restarts += 1
        log.warning("%s: env raised %r; recreating it (restart %d)", self.owner, exc, self.env_restarts)
        try:
            self.envs.close()
        except Exception:  # noqa: BLE001 - a crashed env may fail to close; it is dropped either way
            pass
        self._make_envs()
        self.obs_after_restart = self.reset_all()

    def reset_done(self, done: np.ndarray) -> np.ndarray:
        """Reset the ``done`` sub-envs (reseeding those due); ``[E, *obs_shape]`` observations
        of which the ``done`` rows are new."""
        reset_obs, _ = self.envs.reset(seed=self._new_seeds(done, force=False), options={"reset_mask": done})
        return np.asarray(reset_obs)

    def episode_stats(self, info: dict, done: np.ndarray) -> tuple[list[float], list[int]]:
        """Returns and lengths (agent steps) of the games that really ended in this step."""
        ep = info.get("episode")
        if ep is None:
            return [], []
        mask = info.get("_episode", done)
        idx = np.flatnonzero(mask & done)
        return [float(ep["r"][i]) for i in idx], [int(ep["l"][i]) // self.frames_per_step for i in idx]

    def close(self) -> None:
        self.envs.close()

    # ------------------------------------------------------------------ checkpointing

    def episode_actions(self) -> list[np.ndarray]:
        """Per sub-env, ``[steps]`` int64 actions since its last seeded reset."""
        log_ = np.stack(self._action_log) if self._action_log else np.zeros((0, self.num_envs), dtype=np.int64)
        return [log_[int(self._episode_start[i]) - self._log_base :, i].astype(np.int64) for i in range(self.num_envs)]

    @property
    def episode_seeds(self) -> np.ndarray:
        return self._episode_seed

    def restore(self, steps: int, env_steps: int, env_restarts: int, episode_seed: np.ndarray,
                actions: list[np.ndarray]) -> bool:
        """Re-create each sub-env's state by resetting it with its last seed and replaying its
        actions, with an unseeded reset after each episode end, as :meth:`step` and
        :meth:`reset_done` do (exact for envs whose randomness is seeded by
        ``reset(seed=...)``, which includes classic control and ALE). Returns False when the
        envs cannot be replayed (``env.backend: envpool``): the caller starts new episodes."""
        self.steps, self.env_steps, self.env_restarts = int(steps), int(env_steps), int(env_restarts)
        self._episode_seed = episode_seed.copy()
        longest = max((len(a) for a in actions), default=0)
        self._log_base = self.steps - longest
        self._episode_start = np.array([self.steps - len(a) for a in actions], dtype=np.int64)
        log_ = np.zeros((longest, self.num_envs), dtype=np.int64)
        for i, a in enumerate(actions):
            log_[longest - len(a):, i] = a
        self._action_log = list(log_)
        sub_envs = getattr(self.envs, "envs", None)  # SyncVectorEnv's own envs; envpool has none
        for i, env in enumerate(sub_envs or []):
            env.reset(seed=int(self._episode_seed[i]))
            for a in actions[i].tolist():
                _, _, terminated, truncated, _ = env.step(a)
                if terminated or truncated:
                    env.reset(options={})  # as SyncVectorEnv resets a masked sub-env
        if sub_envs is None:
            log.warning("%s: env.backend=%s cannot replay the checkpointed episodes; starting new ones "
                        "(exact resume needs env.backend=gymnasium)", self.owner, self.env_cfg.backend)
            return False
        return True
