"""Ape-X (Horgan et al. 2018, "Distributed Prioritized Experience Replay"): many actors feed
one central prioritized replay; one learner applies its own updates and publishes its
parameters to the parameter server, from which the actors pull them."""

from __future__ import annotations

from typing import Any

import numpy as np

from distdqn.config import ExperimentConfig
from distdqn.envs import EnvSpaces
from distdqn.program import build_learner
from distdqn.roles.learner import Learner
from distdqn.topologies.base import ParamsPort, ReplayPort


class ApexUpdater:
    """The Ape-X learning step: one learner that applies its own updates and publishes.

    A step draws ``learner.batches_per_sample`` (K) batches in one replay call, takes one
    optimizer step on each in turn and then updates all their priorities at once, so a
    priority reaches the tree up to K - 1 updates late (Ape-X's learner and replay are
    asynchronous too, Horgan et al. 2018, sec. 3). Parameters are published whenever the
    step crosses a multiple of ``publish_period`` updates.

    Args:
        cfg, spaces: the experiment.
        ps: where parameters are published (``set_params``).
        learner: the learner (default: built from the config).
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, ps: ParamsPort, learner: Learner | None = None):
        self.cfg, self.ps = cfg, ps
        self.learner = learner if learner is not None else build_learner(cfg, spaces)
        self.k = cfg.learner.batches_per_sample
        self.metrics: dict[str, float] = {}

    @property
    def updates(self) -> int:
        return self.learner.updates

    @property
    def learners(self) -> list[Learner]:
        return [self.learner]

    def can_step(self, replay: ReplayPort) -> bool:
        return replay.can_sample(self.cfg.learner.batch_size * self.k)

    def step(self, replay: ReplayPort) -> bool:
        batch = replay.sample(self.cfg.learner.batch_size, self.k)
        outs = [self.learner.learn(part) for part in batch.split(self.k)]
        if outs[0].priorities is not None:  # IMPALA's loss gives none (a FIFO replay)
            replay.update_priorities(batch.keys, np.concatenate([o.priorities for o in outs]))
        self.metrics = outs[-1].metrics
        period = self.cfg.learner.publish_period
        if self.learner.updates // period > (self.learner.updates - self.k) // period:
            self.ps.set_params(self.learner.get_params())
            return True
        return False

    def params(self) -> np.ndarray:
        return self.learner.get_params()

    def state_dict(self) -> dict[str, Any]:
        return {"learners": [self.learner.state_dict()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learners"][0])
