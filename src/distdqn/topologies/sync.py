"""Synchronous data-parallel learners: M replicas that stay in agreement.

- ``allreduce`` (synchronous data-parallel SGD, e.g. Goyal et al. 2017, "Accurate, Large
  Minibatch SGD"): every replica computes the gradient of its own batch; the mean of the M
  gradients is applied by every replica with its own optimizer, so replicas that start equal
  stay equal.
- ``average`` (local SGD, Stich 2019; FedAvg, McMahan et al. 2017): replicas take local
  steps on their own batches, and every ``average_period`` rounds all parameters are
  replaced by their mean.

:class:`SyncUpdater` is the step for the replicas one process holds. In one process (serial
runtime) it holds all M: M identical allreduce replicas are one learner applying the mean
of M batch gradients, so it keeps one, and its :class:`InProcess` collective averages
in-process. In a learner process it holds one replica and averages with
:class:`~distdqn.runtime.collective.DistCollective` (``torch.distributed``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distdqn.config import ExperimentConfig
from distdqn.envs import EnvSpaces
from distdqn.program import build_learner
from distdqn.roles.learner import Learner
from distdqn.topologies.base import Collective, ParamsPort, ReplayPort


class InProcess:
    """The collective of replicas that all live in this process."""

    @staticmethod
    def allreduce_mean_(t: torch.Tensor) -> torch.Tensor:
        return t  # the M gradients were averaged before: there is no other process

    @staticmethod
    def average_(learners: list[Learner]) -> None:
        mean = np.mean([lr.get_params() for lr in learners], axis=0, dtype=np.float64).astype(np.float32)
        for lr in learners:
            lr.set_params(mean)


class SyncUpdater:
    """M synchronous data-parallel learners (see the module docstring).

    Args:
        cfg, spaces: the experiment.
        ps: where parameters are published every ``publish_period`` updates.
        learners: this process's replicas (default: built from the config, 1 for
            ``allreduce``, M for ``average``).
        collective: how the replicas agree (default :class:`InProcess`).
        batches: batches one step samples here (default M, all of a round; 1 for a replica
            of its own process).
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, ps: ParamsPort,
                 learners: list[Learner] | None = None, collective: Collective | None = None,
                 batches: int | None = None):
        self.cfg, self.ps = cfg, ps
        self.m = cfg.learner.num_learners
        self.mode = cfg.learner.sync_mode
        if learners is None:
            learners = [build_learner(cfg, spaces) for _ in range(1 if self.mode == "allreduce" else self.m)]
        self.learners = learners
        self.collective = collective if collective is not None else InProcess()
        self.batches = self.m if batches is None else int(batches)
        self.rounds = 0
        self.metrics: dict[str, float] = {}

    @property
    def updates(self) -> int:
        return self.learners[0].updates

    def can_step(self, replay: ReplayPort) -> bool:
        return replay.can_sample(self.cfg.learner.batch_size * self.batches)

    def step(self, replay: ReplayPort) -> bool:
        b = self.cfg.learner.batch_size
        if self.mode == "allreduce":
            lead = self.learners[0]
            outs = []
            for _ in range(self.batches):
                batch = replay.sample(b)
                out = lead.compute_gradients(batch)
                replay.update_priorities(batch.keys, out.priorities)
                outs.append(out)
            grads = torch.stack([o.grads for o in outs]).mean(dim=0).to(lead.device)  # NCCL reduces GPU tensors
            lead.apply_gradients(self.collective.allreduce_mean_(grads))
        else:
            outs = []
            for lr in self.learners:
                batch = replay.sample(b)
                out = lr.learn(batch)
                replay.update_priorities(batch.keys, out.priorities)
                outs.append(out)
            self.rounds += 1
            if self.rounds % self.cfg.learner.average_period == 0:
                self.collective.average_(self.learners)
        self.metrics = {k: float(np.mean([o.metrics[k] for o in outs])) for k in outs[0].metrics}
        if self.updates % self.cfg.learner.publish_period == 0:
            self.ps.set_params(self.params())
            return True
        return False

    def params(self) -> np.ndarray:
        """This process's replicas' parameters (their mean)."""
        if len(self.learners) == 1:
            return self.learners[0].get_params()
        return np.mean([lr.get_params() for lr in self.learners], axis=0, dtype=np.float64).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "learners": [lr.state_dict() for lr in self.learners]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds = int(state["rounds"])
        for lr, st in zip(self.learners, state["learners"]):
            lr.load_state_dict(st)
