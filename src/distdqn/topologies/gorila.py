"""Gorila (Nair et al. 2015, "Massively Parallel Methods for Deep Reinforcement Learning",
sec. 3): learners compute gradients on the parameters they last pulled and push them to
the parameter server, which owns the optimizer and the target network and applies them
asynchronously within its staleness bound
(:meth:`~distdqn.roles.parameter_server.ParameterServer.apply_gradients`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from distdqn.config import ExperimentConfig
from distdqn.envs import EnvSpaces
from distdqn.program import build_learner
from distdqn.roles.learner import Learner
from distdqn.topologies.base import ParamsPort, ReplayPort


class GorilaUpdater:
    """The Gorila learning step for the gradient-mode learners one process holds.

    Learners take turns. At the start of a round (the first learner's turn) every learner
    pulls the newest parameters and target parameters; then each in turn samples a batch,
    computes its gradient, updates the batch's priorities and pushes the gradient with the
    version it was computed on. In one process with M learners the k-th gradient of a round
    so arrives k versions stale (deterministic); a learner process holds one learner and
    pulls before each of its steps.

    Args:
        cfg, spaces: the experiment.
        ps: the parameter server in gradient mode (or a runtime's stand-in).
        learners: the learners (default: ``learner.num_learners`` built from the config).

    Raises:
        ValueError: a parameter server that is not in gradient mode.
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, ps: ParamsPort,
                 learners: list[Learner] | None = None):
        if not getattr(ps, "gradient_mode", True):
            raise ValueError("gorila needs a parameter server in gradient mode")
        self.cfg, self.ps = cfg, ps
        self.learners = learners if learners is not None else [
            build_learner(cfg, spaces) for _ in range(cfg.learner.num_learners)]
        self.versions = [-1] * len(self.learners)
        self.target_versions = [-1] * len(self.learners)
        self.turn = 0
        self.pushed = 0
        self.metrics: dict[str, float] = {}

    @property
    def updates(self) -> int:
        return self.ps.applied_updates

    def can_step(self, replay: ReplayPort) -> bool:
        return replay.can_sample(self.cfg.learner.batch_size)

    def _pull(self, i: int) -> None:
        got = self.ps.get_params(newer_than=self.versions[i])
        if got is not None:
            self.versions[i] = got[0]
            self.learners[i].set_params(got[1])
        tgt = self.ps.get_target(newer_than=self.target_versions[i])
        if tgt is not None:
            self.target_versions[i] = tgt[0]
            self.learners[i].set_target_params(tgt[1])

    def _begin_turn(self, i: int) -> None:
        if i == 0:  # a new round: every learner pulls the newest parameters
            for k in range(len(self.learners)):
                self._pull(k)

    def _sample(self, replay: ReplayPort, i: int) -> Any:
        return replay.sample(self.cfg.learner.batch_size)

    def step(self, replay: ReplayPort) -> bool:
        i = self.turn % len(self.learners)
        self._begin_turn(i)
        self.turn += 1
        batch = self._sample(replay, i)
        out = self.learners[i].compute_gradients(batch)
        if out.priorities is not None:  # the actor-critic loss (A3C) gives none
            replay.update_priorities(batch.keys, out.priorities)
        result = self.ps.apply_gradients(out.grads, self.versions[i])
        self.pushed += 1
        self.metrics = dict(out.metrics)
        if result is None:  # applied elsewhere, later
            return False
        self.metrics.update(staleness=float(result.staleness),
                            dropped_stale_gradients=float(self.ps.dropped_stale_gradients))
        return result.applied

    def params(self) -> np.ndarray:
        return self.ps.get_params()[1]

    def state_dict(self) -> dict[str, Any]:
        return {"turn": self.turn, "versions": list(self.versions), "target_versions": list(self.target_versions),
                "learners": [lr.state_dict() for lr in self.learners]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.turn = int(state["turn"])
        self.versions = [int(v) for v in state["versions"]][: len(self.learners)]
        self.target_versions = [int(v) for v in state["target_versions"]][: len(self.learners)]
        for lr, st in zip(self.learners, state["learners"]):
            lr.load_state_dict(st)
