"""The ``envpool`` environment backend (``env.backend: envpool``).

:class:`EnvPoolVectorEnv` wraps one EnvPool (C++ environments, stepped by EnvPool's own
thread pool) behind the interface that :class:`~distdqn.roles.actor.Actor` and
:class:`~distdqn.roles.evaluator.Evaluator` use on a Gymnasium ``SyncVectorEnv`` with
autoreset disabled:

- ``num_envs``, ``single_observation_space`` (``Box``), ``single_action_space`` (``Discrete``);
- ``reset(seed=..., options={"reset_mask": mask}) -> (obs, info)``: resets the masked
  sub-envs (all without a mask) and returns the observations of *all* sub-envs;
- ``step(actions) -> (obs, reward, terminated, truncated, info)`` with ``reward`` float64,
  ``terminated``/``truncated`` bool, all ``(num_envs,)``; stepping a sub-env that finished
  and was not reset raises ``RuntimeError`` (there is no autoreset);
- ``info["episode"] = {"r", "l", "t"}`` (float64 / int64 / float64, ``(num_envs,)``) with the
  bool mask ``info["_episode"]`` on the step where a game really ends, as
  ``RecordEpisodeStatistics`` under ``SyncVectorEnv`` gives them: ``r`` is the real,
  unclipped return of the whole game; ``l`` counts emulator frames for Atari
  (``frame_skip`` per agent step, so the actor's division by ``frame_skip`` gives agent
  steps) and steps otherwise;
- ``close()``.

Seeding: EnvPool seeds its environments once, when it is created, and ignores seeds
passed to ``reset``. The adapter therefore creates the pool lazily, at the first
``reset``, with EnvPool's ``seed`` set to the first seed given there (sub-env ``i`` then
draws from ``seed + i`` inside EnvPool); every later per-episode seed is ignored. So a
run is reproducible from its root seed, but an episode cannot be re-created from its own
seed: exact resume (replaying the current episode's actions) needs ``env.backend:
gymnasium``; with envpool a resumed actor starts new episodes.

Atari (:func:`distdqn.envs.is_atari` ids; ``ALE/Pong-v5`` and ``PongNoFrameskip-v4`` both
become EnvPool's ``Pong-v5``) follows the semantics of the Gymnasium path
(:func:`distdqn.envs.make_env`): EnvPool does the emulator work (``frame_skip`` action
repeats with max-pooling of the last two frames, 84x84 grayscale with INTER_AREA
resizing, 1 to ``noop_max`` no-op frames after a game reset, ``repeat_action_probability
= sticky_actions``, the minimal action set, the time limit), with its own episodic life, reward
clipping, fire-reset and frame stacking switched off; the adapter does those exactly as
the Gymnasium wrappers do: a lost life (while the game goes on) ends the *learning*
episode as terminated; resetting such a sub-env takes one NOOP step instead of a game
reset; after every reset a game with a FIRE action takes one FIRE step (if that ends the
episode, it is reset once more); rewards are clipped to their sign when ``clip_rewards``;
observations are stacks of the last ``frame_stack`` frames, oldest first, a reset
observation being its frame repeated. ``max_episode_steps`` (default 27,000, the 108,000
frames of ALE v5) counts agent steps since the game's reset, the adapter's FIRE and
life-loss NOOP steps included (the Gymnasium path counts emulator frames, reset no-ops
included, against ``max_episode_steps * frame_skip``). Differences that remain: ``noop_max=0`` becomes
one no-op frame (EnvPool needs ``noop_max >= 1``), the no-op frames of a game reset are
not counted in ``info["episode"]["l"]``, and the random streams differ from ALE's.
"""

from __future__ import annotations

import difflib
import importlib
import time
import warnings
from typing import Any

import numpy as np
from gymnasium import spaces

from distdqn.config import ConfigError, EnvConfig
from distdqn.envs.spec import EnvSpecError, check_space_pair, is_atari

__all__ = ["EnvPoolVectorEnv", "envpool_task_id", "import_envpool"]

_INSTALL = "pip install envpool, or pip install -e '.[envpool]'"
_NOOP, _FIRE = 0, 1  # ALE action ids; the minimal action set always starts with NOOP


def import_envpool() -> Any:
    """The ``envpool`` module.

    Raises:
        ConfigError: envpool is not installed (one line naming ``env.backend`` and how to
            install it).
    """
    try:
        return importlib.import_module("envpool")
    except ImportError:
        raise ConfigError("env.backend", "envpool",
                          f"gymnasium (envpool is not installed: {_INSTALL})") from None


def envpool_task_id(env_id: str, atari: bool) -> str:
    """EnvPool's id for a Gymnasium id: Atari ``ALE/<Game>-v5`` and ``<Game>NoFrameskip-v4``
    map to ``<Game>-v5`` (the preprocessing is set explicitly, so the version suffix of
    the Gymnasium id does not matter); other ids are used as they are.

    Raises:
        ConfigError: envpool is not installed.
        distdqn.envs.spec.EnvSpecError: EnvPool has no such task (one line, with a close match if
            there is one).
    """
    envpool = import_envpool()
    task = env_id
    if atari:
        name = env_id.removeprefix("ALE/")
        name = name.split("NoFrameskip")[0].split("-v")[0]
        task = f"{name}-v5"
    available = list(envpool.list_all_envs())
    if task in available:
        return task
    close = difflib.get_close_matches(task, available, n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise EnvSpecError(f"environment {env_id!r} is not available with env.backend=envpool{hint}; "
                       "use an EnvPool id such as 'CartPole-v1' or 'ALE/Pong-v5', or env.backend=gymnasium")


class EnvPoolVectorEnv:
    """``num_envs`` EnvPool environments as a Gymnasium-style vector env without autoreset
    (see the module docstring for the contract and the Atari semantics).

    Args:
        cfg: which env, its preprocessing and ``envpool_threads`` (``cfg.backend`` is not
            read here).
        num_envs: sub-envs, >= 1.
        num_threads: EnvPool worker threads, overriding ``cfg.envpool_threads`` (0: one
            per sub-env, EnvPool's default).

    Raises:
        ConfigError: envpool is not installed.
        distdqn.envs.spec.EnvSpecError: unknown id, or spaces distdqn cannot use.
        ValueError: ``num_envs < 1``.
    """

    def __init__(self, cfg: EnvConfig, num_envs: int, num_threads: int | None = None):

        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self._envpool = import_envpool()
        self.cfg = cfg
        self.num_envs = int(num_envs)
        self.atari = is_atari(cfg.id)
        self.task_id = envpool_task_id(cfg.id, self.atari)
        kwargs: dict[str, Any] = {"num_envs": self.num_envs, "batch_size": self.num_envs,
                                  "num_threads": int(cfg.envpool_threads if num_threads is None else num_threads)}
        if cfg.max_episode_steps is not None:
            kwargs["max_episode_steps"] = int(cfg.max_episode_steps)
        if self.atari:
            kwargs.update(
                stack_num=1, frame_skip=cfg.frame_skip, noop_max=max(cfg.noop_max, 1),
                episodic_life=False, reward_clip=False, use_fire_reset=False,
                img_height=84, img_width=84, gray_scale=True, use_inter_area_resize=True,
                repeat_action_probability=float(cfg.sticky_actions), full_action_space=False,
            )
        self._kwargs = kwargs
        with warnings.catch_warnings():  # EnvPool builds float32 Boxes from float64 bounds
            warnings.simplefilter("ignore", UserWarning)
            spec = self._envpool.make_spec(self.task_id, **kwargs)
            obs_space, act_space = spec.gymnasium_observation_space, spec.gymnasium_action_space
        check_space_pair(obs_space, act_space, cfg.id)
        if self.atari:
            k = cfg.frame_stack
            self.single_observation_space = spaces.Box(0, 255, (k, 84, 84), np.uint8)
            self._frame_stack = k
            self._stack = np.zeros((self.num_envs, k, 84, 84), dtype=np.uint8)
            self._has_fire = self._game_has_fire()
        else:
            self.single_observation_space = obs_space
            self._frame_stack = 0
            self._has_fire = False
        self.single_action_space = spaces.Discrete(int(act_space.n))
        self._obs_dtype = self.single_observation_space.dtype
        self._pool: Any = None
        self.seed: int | None = None
        """The seed EnvPool was created with (None until the first reset)."""
        n = self.num_envs
        self._all_ids = np.arange(n, dtype=np.int32)
        self._obs = np.zeros((n, *self.single_observation_space.shape), dtype=self._obs_dtype)
        self._needs_reset = np.ones(n, dtype=bool)  # finished (or never reset) sub-envs
        self._life_lost = np.zeros(n, dtype=bool)  # finished by a life loss: the game goes on
        self._lives = np.zeros(n, dtype=np.int64)
        self._ep_return = np.zeros(n, dtype=np.float64)
        self._ep_length = np.zeros(n, dtype=np.int64)
        self._ep_start = np.zeros(n, dtype=np.float64)
        self._per_step = cfg.frame_skip if self.atari else 1

    def _game_has_fire(self) -> bool:
        """Whether the game's minimal action set has FIRE (the Gymnasium path's FireReset
        condition). EnvPool does not expose action meanings, so they are read from
        Gymnasium's ALE env of the same game (ale-py is a dependency of distdqn).

        Raises:
            distdqn.envs.spec.EnvSpecError: ale-py cannot build the game.
        """
        import gymnasium

        try:
            env = gymnasium.make(f"ALE/{self.task_id}")
        except Exception as exc:  # noqa: BLE001 - any failure means we cannot tell
            raise EnvSpecError(f"environment {self.cfg.id!r}: env.backend=envpool needs ale-py to read the "
                               f"game's action meanings ({type(exc).__name__}: {exc})") from None
        try:
            return "FIRE" in env.unwrapped.get_action_meanings()
        finally:
            env.close()

    # ------------------------------------------------------------------ pool primitives

    def _create(self, seed: int | None) -> None:
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF)
        self.seed = int(seed)
        with warnings.catch_warnings():  # EnvPool builds float32 Boxes from float64 bounds
            warnings.simplefilter("ignore", UserWarning)
            self._pool = self._envpool.make_gymnasium(self.task_id, seed=self.seed, **self._kwargs)
            _ = self._pool.observation_space  # built lazily, at the first recv otherwise

    @staticmethod
    def _order(info: dict[str, Any], ids: np.ndarray) -> np.ndarray:
        """Permutation that puts EnvPool's rows in the order of ``ids``."""
        got = info["env_id"]
        if got.shape == ids.shape and (got == ids).all():
            return slice(None)  # type: ignore[return-value]
        pos = {int(e): k for k, e in enumerate(got)}
        return np.array([pos[int(e)] for e in ids], dtype=np.int64)

    def _pool_reset(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Real reset of sub-envs ``ids``; returns their (obs or frame, lives)."""
        obs, info = self._pool.reset(ids)
        p = self._order(info, ids)
        obs = np.asarray(obs)[p]
        lives = np.asarray(info["lives"])[p] if "lives" in info else np.zeros(len(ids), np.int64)
        self._ep_return[ids] = 0.0
        self._ep_length[ids] = 0
        self._ep_start[ids] = time.perf_counter()
        return obs, lives

    def _pool_step(self, ids: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        """One step of sub-envs ``ids``; returns (obs or frame, raw reward float64, game over or
        truncated bool, truncated bool, lives) in the order of ``ids`` and counts the step
        into the episode statistics."""
        full = len(ids) == self.num_envs  # every sub-env: EnvPool's default env_id
        obs, rew, term, trunc, info = self._pool.step(actions.astype(np.int32, copy=False), None if full else ids)
        p = self._order(info, ids)
        obs = np.asarray(obs)[p]
        rew = np.asarray(rew, dtype=np.float64)[p]
        trunc = np.asarray(trunc, dtype=bool)[p]
        over = np.asarray(term, dtype=bool)[p] | trunc
        lives = np.asarray(info["lives"])[p] if "lives" in info else np.zeros(len(ids), np.int64)
        self._ep_return[ids] += rew
        self._ep_length[ids] += self._per_step
        return obs, rew, over, trunc, lives

    # ------------------------------------------------------------------ Atari resets

    def _atari_reset(self, ids: np.ndarray) -> None:
        """Reset Atari sub-envs ``ids`` the way EpisodicLife + FireReset + FrameStackObservation
        do: a life-loss reset takes a NOOP step (a real reset if that ends the game), any other
        a real reset; then FIRE once if the game has it, resetting once more (no FIRE) if that
        step ends the episode. Fills the stacks with each sub-env's last frame."""
        frames = np.zeros((len(ids), 84, 84), dtype=np.uint8)
        self._reset_or_noop(ids, frames)
        if self._has_fire:
            f, _, over, _, lives = self._pool_step(ids, np.full(len(ids), _FIRE))
            frames[:] = f[:, -1]
            life = self.cfg.episodic_life & ~over & (lives > 0) & (lives < self._lives[ids])
            self._lives[ids] = lives
            again = over | life
            if again.any():
                self._life_lost[ids[life]] = True
                self._life_lost[ids[over]] = False
                sub = np.zeros((int(again.sum()), 84, 84), dtype=np.uint8)
                self._reset_or_noop(ids[again], sub)
                frames[again] = sub
        self._stack[ids] = frames[:, None]
        self._life_lost[ids] = False

    def _reset_or_noop(self, ids: np.ndarray, frames: np.ndarray) -> None:
        """EpisodicLife.reset for ``ids``: NOOP where the game goes on after a lost life (a real
        reset if the NOOP ends it), a real reset elsewhere; writes the frames, updates lives."""
        noop = self._life_lost[ids]
        real = ~noop
        if noop.any():
            f, _, over, _, lives = self._pool_step(ids[noop], np.full(int(noop.sum()), _NOOP))
            idx = np.flatnonzero(noop)
            frames[idx] = f[:, -1]
            self._lives[ids[idx]] = lives
            real[idx[over]] = True
        if real.any():
            f, lives = self._pool_reset(ids[real])
            frames[real] = f[:, -1]
            self._lives[ids[real]] = lives

    # ------------------------------------------------------------------ Gymnasium-style API

    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset the sub-envs selected by ``options["reset_mask"]`` (bool ``(num_envs,)``; all
        when absent). ``seed``: only the first reset uses it (the first non-None entry of a
        list, or the int), to create the pool; later seeds are ignored (see module doc).

        Returns:
            ``(obs, info)``: observations of all sub-envs ``(num_envs, *obs_shape)`` (fresh
            array) and an empty info dict.
        """
        mask = np.ones(self.num_envs, dtype=bool)
        if options and options.get("reset_mask") is not None:
            mask = np.asarray(options["reset_mask"], dtype=bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        unknown = set(options or {}) - {"reset_mask"}
        if unknown:
            raise ValueError(f"unsupported reset options {sorted(unknown)}; only reset_mask")
        if self._pool is None:
            first = seed
            if isinstance(seed, (list, tuple, np.ndarray)):
                first = next((int(s) for s in seed if s is not None), None)
            self._create(first)
            mask[:] = True  # a new pool: every sub-env starts a game
            self._life_lost[:] = False
        ids = self._all_ids[mask]
        if ids.size:
            if self.atari:
                self._atari_reset(ids)
            else:
                obs, _ = self._pool_reset(ids)
                self._obs[ids] = obs
            self._needs_reset[ids] = False
        return self._observations(), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every sub-env with ``actions`` (int ``(num_envs,)``).

        Returns:
            ``(obs, reward, terminated, truncated, info)``: obs ``(num_envs, *obs_shape)``
            (fresh array), reward float64 (clipped to its sign for Atari with
            ``clip_rewards``), terminated/truncated bool, all ``(num_envs,)``;
            ``info["episode"]``/``info["_episode"]`` where a game really ended.

        Raises:
            RuntimeError: before the first ``reset``, or a sub-env finished and was not reset.
        """
        if self._pool is None:
            raise RuntimeError("EnvPoolVectorEnv.step before reset")
        if self._needs_reset.any():
            raise RuntimeError(f"sub-envs {np.flatnonzero(self._needs_reset).tolist()} finished and were not "
                               "reset; autoreset is disabled: reset them with options={'reset_mask': done}")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        obs, raw, over, trunc, lives = self._pool_step(self._all_ids, actions)
        terminated = over & ~trunc
        if self.atari:
            self._stack[:, :-1] = self._stack[:, 1:]
            self._stack[:, -1] = obs[:, -1]
            life = np.zeros(self.num_envs, dtype=bool)
            if self.cfg.episodic_life:
                life = ~over & (lives > 0) & (lives < self._lives)
                terminated = terminated | life
            self._lives[:] = lives
            self._life_lost[:] = life
            reward = np.sign(raw) if self.cfg.clip_rewards else raw
        else:
            self._obs[:] = obs
            reward = raw
        done = terminated | trunc
        self._needs_reset |= done
        info: dict[str, Any] = {}
        if over.any():
            now = time.perf_counter()
            info["episode"] = {
                "r": np.where(over, self._ep_return, 0.0),
                "l": np.where(over, self._ep_length, 0),
                "t": np.where(over, np.round(now - self._ep_start, 6), 0.0),
            }
            info["_episode"] = over.copy()
        return self._observations(), reward, terminated, trunc, info

    def _observations(self) -> np.ndarray:
        if self.atari:
            return self._stack.copy()
        return self._obs.copy()

    def close(self, **kwargs: Any) -> None:
        """Release the pool (idempotent)."""
        if self._pool is not None:
            try:
                self._pool.close()
            finally:
                self._pool = None

    def __repr__(self) -> str:
        return f"EnvPoolVectorEnv({self.task_id!r}, num_envs={self.num_envs}, seed={self.seed})"
