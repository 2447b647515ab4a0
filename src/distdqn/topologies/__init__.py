"""Topologies: which roles exist and how data flows between them. Each topology's learning
step is written once (:mod:`~distdqn.topologies.apex`, :mod:`~distdqn.topologies.gorila`,
:mod:`~distdqn.topologies.sync`) against the ports of :mod:`~distdqn.topologies.base`;
every runtime calls that one definition."""

from __future__ import annotations

from typing import Any

from distdqn.config import ExperimentConfig
from distdqn.envs import EnvSpaces
from distdqn.topologies.a3c import A3CUpdater
from distdqn.topologies.apex import ApexUpdater
from distdqn.topologies.base import ParamsPort, Updater
from distdqn.topologies.gorila import GorilaUpdater
from distdqn.topologies.sync import SyncUpdater

__all__ = ["A3CUpdater", "ApexUpdater", "GorilaUpdater", "SyncUpdater", "make_updater"]


def make_updater(cfg: ExperimentConfig, spaces: EnvSpaces, ps: ParamsPort, **kwargs: Any) -> Updater:
    """The learning step of ``cfg.topology`` (``kwargs``: the updater's own, e.g. ``learners``)."""
    # SEED learns as Ape-X does (its actors are inference slots). IMPALA's learning step is
    # Ape-X's (one learner, own updates, publication) on a FIFO
    # replay of unrolls, whose loss gives no priorities.
    cls = {"apex": ApexUpdater, "gorila": GorilaUpdater, "sync": SyncUpdater, "seed": ApexUpdater, "impala": ApexUpdater,
           "a3c": A3CUpdater}[cfg.topology]
    if cls is ApexUpdater and "learners" in kwargs:
        (kwargs["learner"],) = kwargs.pop("learners")
    return cls(cfg, spaces, ps, **kwargs)
