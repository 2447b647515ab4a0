"""Building Gymnasium environments from an :class:`~distdqn.config.EnvConfig`.

- :func:`make_env`: one environment, with the standard DQN Atari preprocessing for
  Atari ids (Mnih et al. 2015, "Human-level control through deep reinforcement
  learning", Nature, Methods: "Preprocessing" and "Training details"; sticky actions
  as in Machado et al. 2018, "Revisiting the Arcade Learning Environment", JAIR).
- :func:`make_vector_env`: ``num_envs`` copies stepped in-process as one
  :class:`gymnasium.vector.SyncVectorEnv`, autoreset disabled by default; or, with
  ``env.backend: envpool``, one :class:`distdqn.envs.envpool.EnvPoolVectorEnv` with the
  same interface and Atari semantics.
- :func:`env_spaces`: observation shape/dtype and number of actions, checked.

Every environment has ``gymnasium.wrappers.RecordEpisodeStatistics`` as its
innermost wrapper, so ``info["episode"]`` (keys ``r``, ``l``, ``t``) reports the
real, unclipped return of the whole game and appears only when the game really
ends (terminated or truncated), never on an Atari life loss.

Importing this module registers the ALE ids (when ``ale_py`` is installed). The
``distdqn/...`` fault-drill envs of :mod:`distdqn.testing.envs` are registered when such an id
is first asked for, in the process that asks.
"""

from __future__ import annotations

from functools import partial

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from distdqn.config import EnvConfig
from distdqn.envs.atari import make_atari
from distdqn.envs.envpool import EnvPoolVectorEnv
from distdqn.envs.observations import adapt_observations
from distdqn.envs.spec import EnvSpaces, EnvSpecError, check_space_pair, is_atari
from distdqn.envs.user import check_id, construct, import_modules, resolve

try:
    import ale_py
except ImportError:  # pragma: no cover - ale-py is a dependency, but keep CartPole usable
    ale_py = None
else:
    gymnasium.register_envs(ale_py)

__all__ = ["env_spaces", "make_env", "make_vector_env"]

def _check_spaces(env: gymnasium.Env, env_id: str) -> None:
    check_space_pair(env.observation_space, env.action_space, env_id)


def make_env(cfg: EnvConfig) -> gymnasium.Env:
    """Build one Gymnasium environment for ``cfg.id`` (``cfg.backend`` is not read: the
    envpool backend exists only as a vector env, :func:`make_vector_env`).

    Non-Atari ids: the env ``cfg.id`` leads to (:mod:`distdqn.envs.user`: a registered id,
    ``module:id``, or an entry point; ``cfg.imports`` imported first, ``cfg.kwargs`` passed
    on; ``max_episode_steps`` overridden when ``cfg.max_episode_steps`` is set), then
    ``RecordEpisodeStatistics``, then the observation conversion of
    :mod:`distdqn.envs.observations` (CartPole-v1 stays float32 ``(4,)``).

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
        EnvSpecError: an unknown module or id, an entry point that is not callable, a
            constructor that raised, or a space distdqn cannot use (the env is closed).
    """
    if is_atari(cfg.id):
        import_modules(cfg.imports)
        check_id(cfg.id)
        env = make_atari(cfg)
    else:
        kind, maker = resolve(cfg)
        kwargs = dict(cfg.kwargs)
        if cfg.max_episode_steps is not None and kind == "registered":
            kwargs["max_episode_steps"] = cfg.max_episode_steps
        env = construct(cfg, maker, kwargs)
        if cfg.max_episode_steps is not None and kind == "entry point":
            env = gymnasium.wrappers.TimeLimit(env, cfg.max_episode_steps)
        env = gymnasium.wrappers.RecordEpisodeStatistics(env)
    try:
        if not is_atari(cfg.id):
            env = adapt_observations(env, cfg)
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
    ``SyncVectorEnv``. ``envpool``: one :class:`distdqn.envs.envpool.EnvPoolVectorEnv`
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
    :class:`~distdqn.envs.envpool.EnvPoolVectorEnv`), read and check its spaces, close it.

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
