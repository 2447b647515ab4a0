"""Building Gymnasium environments from an :class:`~distdqn.config.EnvConfig`.

- :func:`make_env`: one environment, with the standard DQN Atari preprocessing for
  Atari ids (Mnih et al. 2015, "Human-level control through deep reinforcement
  learning", Nature, Methods: "Preprocessing" and "Training details"; sticky actions
  as in Machado et al. 2018, "Revisiting the Arcade Learning Environment", JAIR).
- :func:`make_vector_env`: ``num_envs`` copies stepped in-process as one
  :class:`gymnasium.vector.SyncVectorEnv`, autoreset disabled by default; or, with
  ``env.backend: envpool``, one :class:`distdqn.envpool_backend.EnvPoolVectorEnv` with the
  same interface and Atari semantics.
- :func:`env_spaces`: observation shape/dtype and number of actions, checked.

Every environment has ``gymnasium.wrappers.RecordEpisodeStatistics`` as its
innermost wrapper, so ``info["episode"]`` (keys ``r``, ``l``, ``t``) reports the
real, unclipped return of the whole game and appears only when the game really
ends (terminated or truncated), never on an Atari life loss.

Importing this module registers the ALE ids (when ``ale_py`` is installed) and the
``distdqn/...`` test envs of :mod:`distdqn.testing_envs`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import partial
from typing import Any, SupportsFloat

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from distdqn import testing_envs as _testing_envs  # noqa: F401  (registers distdqn/... ids)
from distdqn.config import EnvConfig
from distdqn.envpool_backend import EnvPoolVectorEnv

try:
    import ale_py
except ImportError:  # pragma: no cover - ale-py is a dependency, but keep CartPole usable
    ale_py = None
else:
    gymnasium.register_envs(ale_py)

__all__ = [
    "EnvSpaces",
    "EnvSpecError",
    "EpisodicLife",
    "FireReset",
    "env_spaces",
    "is_atari",
    "make_env",
    "make_vector_env",
    "sign_reward",
]

_EXAMPLE_IDS = "e.g. 'CartPole-v1' or 'ALE/Pong-v5'"


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


# ----------------------------------------------------------------------------- Atari wrappers


def sign_reward(reward: SupportsFloat) -> np.float32:
    """Reward clipping to its sign, {-1, 0, +1} as float32 (Mnih et al. 2015, Methods)."""
    return np.float32(np.sign(float(reward)))


class EpisodicLife(gymnasium.Wrapper):
    """A lost life ends the *learning* episode; the game goes on (Mnih et al. 2015).

    ``step`` returns ``terminated=True`` when the ALE life counter drops while the
    game is not over (a drop to 0 lives waits for the real game over). ``reset``
    restarts the game only when it is really over (terminated or truncated by the
    game), otherwise it takes one no-op step (action 0, ``NOOP`` in the ALE) and
    returns that observation, so lives and score carry over. ``seed`` and
    ``options`` are passed on only to real resets; a life-loss reset ignores them.

    Must wrap an ALE env (``env.unwrapped.ale``). Observations and rewards unchanged.
    """

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        if not hasattr(env.unwrapped, "ale"):
            raise TypeError(f"EpisodicLife needs an ALE environment, got {env.unwrapped!r}")
        self._lives = 0
        self._game_over = True

    @property
    def game_over(self) -> bool:
        """Whether the game itself ended (the next ``reset`` is a real one)."""
        return self._game_over

    def _ale_lives(self) -> int:
        return int(self.env.unwrapped.ale.lives())

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._game_over = bool(terminated or truncated)
        lives = self._ale_lives()
        if not self._game_over and 0 < lives < self._lives:
            terminated = True
        self._lives = lives
        return obs, reward, terminated, truncated, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if self._game_over:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # the no-op itself ended the game: start anew
                obs, info = self.env.reset(seed=seed, options=options)
        self._game_over = False
        self._lives = self._ale_lives()
        return obs, info


class FireReset(gymnasium.Wrapper):
    """Takes the ``FIRE`` action right after every reset, for games that wait for it
    to start (e.g. Breakout launches the ball); common DQN practice. If that step
    ends the episode, the env is reset once more. Spaces unchanged.

    Must wrap an ALE env whose action meanings include ``FIRE``.
    """

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        meanings = list(env.unwrapped.get_action_meanings())
        if "FIRE" not in meanings:
            raise TypeError(f"FireReset needs a FIRE action, the game has {meanings}")
        self._fire = meanings.index("FIRE")

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        obs, _, terminated, truncated, _ = self.env.step(self._fire)
        if terminated or truncated:
            obs, info = self.env.reset(seed=seed, options=options)
        return obs, info


# ----------------------------------------------------------------------------- building


def _check_id(env_id: str) -> None:
    if env_id in gymnasium.registry:
        return
    hint = ""
    close = difflib.get_close_matches(env_id, list(gymnasium.registry.keys()), n=1, cutoff=0.75)
    if close:
        hint = f" (did you mean {close[0]!r}?)"
    elif is_atari(env_id) and ale_py is None:
        hint = " (Atari ids need the ale-py package)"
    raise EnvSpecError(
        f"unknown environment id {env_id!r}{hint}; use a registered Gymnasium id, {_EXAMPLE_IDS}"
    )


def _check_spaces(env: gymnasium.Env, env_id: str) -> None:
    _check_space_pair(env.observation_space, env.action_space, env_id)


def _check_space_pair(obs: spaces.Space, act: spaces.Space, env_id: str) -> None:
    """Raises :class:`EnvSpecError` unless ``act`` is ``Discrete`` from 0 and ``obs`` a ``Box``."""
    if not isinstance(act, spaces.Discrete) or int(act.start) != 0:
        raise EnvSpecError(
            f"environment {env_id!r} has action space {act}; distdqn needs a Discrete "
            f"action space (starting at 0), {_EXAMPLE_IDS}"
        )
    if not isinstance(obs, spaces.Box):
        raise EnvSpecError(
            f"environment {env_id!r} has observation space {obs}; distdqn needs a Box "
            f"observation space, {_EXAMPLE_IDS}"
        )


def _make_atari(cfg: EnvConfig) -> gymnasium.Env:
    make_kwargs: dict[str, Any] = {
        "frameskip": 1,  # AtariPreprocessing skips frames (and max-pools the last two)
        "repeat_action_probability": cfg.sticky_actions,
    }
    if cfg.max_episode_steps is not None:
        # Truncate inside the ALE so RecordEpisodeStatistics sees the truncation.
        make_kwargs["max_num_frames_per_episode"] = cfg.max_episode_steps * cfg.frame_skip
    env = gymnasium.make(cfg.id, **make_kwargs)
    env = gymnasium.wrappers.RecordEpisodeStatistics(env)
    env = gymnasium.wrappers.AtariPreprocessing(
        env,
        noop_max=cfg.noop_max,
        frame_skip=cfg.frame_skip,
        screen_size=84,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    if cfg.episodic_life:
        env = EpisodicLife(env)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireReset(env)
    if cfg.clip_rewards:
        env = gymnasium.wrappers.TransformReward(env, sign_reward)
    return gymnasium.wrappers.FrameStackObservation(env, cfg.frame_stack)


def make_env(cfg: EnvConfig) -> gymnasium.Env:
    """Build one Gymnasium environment for ``cfg.id`` (``cfg.backend`` is not read: the
    envpool backend exists only as a vector env, :func:`make_vector_env`).

    Non-Atari ids: ``gymnasium.make(cfg.id)`` (``max_episode_steps`` overridden when
    ``cfg.max_episode_steps`` is set), then ``RecordEpisodeStatistics``; observations
    as the env defines them (CartPole-v1: float32 ``(4,)``).

    Atari ids (:func:`is_atari`), the preprocessing of Mnih et al. 2015, innermost first:
    ALE env with ``frameskip=1`` and ``repeat_action_probability=cfg.sticky_actions``
    (``cfg.max_episode_steps`` becomes the ALE's frame limit ``max_episode_steps *
    frame_skip``, ending games *truncated*); ``RecordEpisodeStatistics`` (so
    ``info["episode"]`` is the real game's return, and its length ``l`` counts
    emulator frames including no-op resets); ``AtariPreprocessing`` (up to
    ``noop_max`` random no-ops on reset, ``frame_skip`` action repeats with max-pooling
    of the last two frames, 84x84 grayscale uint8); :class:`EpisodicLife` if
    ``cfg.episodic_life``; :class:`FireReset` if the game has a FIRE action; reward
    sign clipping if ``cfg.clip_rewards``; ``FrameStackObservation(cfg.frame_stack)``.
    Observations: uint8 ``(frame_stack, 84, 84)``, oldest frame first.

    Raises:
        EnvSpecError: unknown id, or a space distdqn cannot use (the env is closed).
    """
    _check_id(cfg.id)
    if is_atari(cfg.id):
        env = _make_atari(cfg)
    else:
        if cfg.max_episode_steps is not None:
            env = gymnasium.make(cfg.id, max_episode_steps=cfg.max_episode_steps)
        else:
            env = gymnasium.make(cfg.id)
        env = gymnasium.wrappers.RecordEpisodeStatistics(env)
    try:
        _check_spaces(env, cfg.id)
    except EnvSpecError:
        env.close()
        raise
    return env


def make_vector_env(
    cfg: EnvConfig,
    num_envs: int,
    autoreset_mode: AutoresetMode = AutoresetMode.DISABLED,
) -> SyncVectorEnv | EnvPoolVectorEnv:
    """``num_envs`` sub-envs of ``cfg.id`` as one vector env, built by ``cfg.backend``.

    ``gymnasium`` (default): ``num_envs`` copies of :func:`make_env` as one in-process
    ``SyncVectorEnv``. ``envpool``: one :class:`distdqn.envpool_backend.EnvPoolVectorEnv`
    (EnvPool's C++ environments and thread pool behind the same interface, autoreset
    disabled only; per-episode seeds are ignored, see that module).

    Batched observations have shape ``(num_envs, *obs_shape)``; rewards float64
    ``(num_envs,)``; terminations/truncations bool ``(num_envs,)``. With the default
    ``AutoresetMode.DISABLED`` the caller resets finished sub-envs itself, e.g.
    ``venv.reset(seed=[...], options={"reset_mask": done})`` with ``done`` a bool
    ``(num_envs,)`` array; stepping a finished, un-reset sub-env is an error.
    ``AutoresetMode.NEXT_STEP`` / ``SAME_STEP`` give Gymnasium's own autoreset.

    Raises:
        EnvSpecError: as :func:`make_env`; with ``envpool``, an id EnvPool does not have.
        ConfigError: ``cfg.backend == "envpool"`` and envpool is not installed.
        ValueError: ``num_envs < 1``; an autoreset mode other than DISABLED with ``envpool``.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if cfg.backend == "envpool":
        if autoreset_mode != AutoresetMode.DISABLED:
            raise ValueError(f"env.backend=envpool supports only AutoresetMode.DISABLED, got {autoreset_mode}")
        return EnvPoolVectorEnv(cfg, num_envs)
    return SyncVectorEnv(
        [partial(make_env, cfg) for _ in range(num_envs)],
        autoreset_mode=autoreset_mode,
    )


def env_spaces(cfg: EnvConfig) -> EnvSpaces:
    """Build one env with :func:`make_env` (``envpool`` backend: an unstarted
    :class:`~distdqn.envpool_backend.EnvPoolVectorEnv`), read and check its spaces, close it.

    Raises:
        EnvSpecError: unknown id or unsupported spaces.
        ConfigError: ``cfg.backend == "envpool"`` and envpool is not installed.
    """
    if cfg.backend == "envpool":
        venv = EnvPoolVectorEnv(cfg, 1)
        obs, act = venv.single_observation_space, venv.single_action_space
        return EnvSpaces(tuple(int(d) for d in obs.shape), np.dtype(obs.dtype), int(act.n))
    env = make_env(cfg)
    try:
        obs, act = env.observation_space, env.action_space
        assert isinstance(obs, spaces.Box) and isinstance(act, spaces.Discrete)
        return EnvSpaces(
            obs_shape=tuple(int(d) for d in obs.shape),
            obs_dtype=np.dtype(obs.dtype),
            num_actions=int(act.n),
        )
    finally:
        env.close()
