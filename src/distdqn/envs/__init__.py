"""Environments: Gymnasium ids to (vector) envs, the Atari preprocessing, the EnvPool
backend, and the checks of what distdqn can use.

- :mod:`distdqn.envs.spec`: :class:`EnvSpaces`, :class:`EnvSpecError`, :func:`is_atari`;
- :mod:`distdqn.envs.make`: :func:`make_env`, :func:`make_vector_env`, :func:`env_spaces`;
- :mod:`distdqn.envs.atari`: the DQN Atari wrappers;
- :mod:`distdqn.envs.envpool`: ``env.backend: envpool``.
"""

from distdqn.envs.atari import EpisodicLife, FireReset, sign_reward
from distdqn.envs.make import env_spaces, make_env, make_vector_env
from distdqn.envs.spec import EnvSpaces, EnvSpecError, is_atari

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
