"""Agents: what is learned, and how (:mod:`distdqn.agents.base`): ``dqn``, ``r2d2`` and ``actor_critic``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distdqn.agents.base import Agent
    from distdqn.config import ExperimentConfig
    from distdqn.envs import EnvSpaces

AGENTS: dict[str, str] = {"dqn": "distdqn.agents.dqn.agent:DQNAgent", "r2d2": "distdqn.agents.r2d2.agent:R2D2Agent",
                          "actor_critic": "distdqn.agents.actor_critic.agent:ActorCriticAgent"}
"""``agent`` config value -> ``module:class``, imported when first asked for."""


def make_agent(cfg: ExperimentConfig, spaces: EnvSpaces) -> Agent:
    """The agent ``cfg.agent`` names, built for ``cfg`` and the env's ``spaces``."""
    module, name = AGENTS[cfg.agent].split(":")
    return getattr(importlib.import_module(module), name)(cfg, spaces)
