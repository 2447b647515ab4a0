"""A3C (Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement Learning", Alg. S3)
on the parameter server: M workers, worker i an actor and a learner, each computing
actor-critic gradients on its own newest rollouts with the newest parameters and pushing
them to the parameter server in gradient mode, which applies them asynchronously within
its staleness bound (Gorila's server, :mod:`~distdqn.topologies.gorila`).

Worker i's rollouts reach its learner through its own FIFO pool (``replay.placement:
per_actor``, ``replay.kind: fifo``: actor i's unrolls, each read once, oldest first): the
learner reads only what its own actor collected. A worker pulls the newest parameters
before each of its steps (after its previous push). The loss is the actor-critic agent's
(V-trace, which on the policy's own rollouts is the n-step return of Alg. S3).
"""

from __future__ import annotations

from typing import Any

from distdqn.config import ExperimentConfig
from distdqn.envs import EnvSpaces
from distdqn.roles.learner import Learner
from distdqn.topologies.base import ParamsPort, ReplayPort
from distdqn.topologies.gorila import GorilaUpdater


class A3CUpdater(GorilaUpdater):
    """The A3C learning step for the workers' learners one process holds.

    In one process (serial) it holds all M learners; learner i reads pool i and the turns
    go round in order. In a worker process it holds that worker's one learner, and the
    runtime hands it batches of its own pool.

    Args:
        cfg, spaces: the experiment.
        ps: the parameter server in gradient mode (or a runtime's stand-in).
        learners: the learners (default: ``learner.num_learners`` built from the config,
            learner i reading pool i); given learners read the port's batches as they come.
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, ps: ParamsPort,
                 learners: list[Learner] | None = None):
        super().__init__(cfg, spaces, ps, learners)
        self.own_pools = learners is None

    def _own(self, i: int) -> dict[str, int]:
        """Where learner ``i`` reads: its own pool in one process, else the port's batches."""
        return {"pool": i} if self.own_pools else {}

    def can_step(self, replay: ReplayPort) -> bool:
        return replay.can_sample(self.cfg.learner.batch_size, **self._own(self.turn % len(self.learners)))

    def _begin_turn(self, i: int) -> None:
        self._pull(i)  # the newest parameters, after this worker's previous push

    def _sample(self, replay: ReplayPort, i: int) -> Any:
        return replay.sample(self.cfg.learner.batch_size, **self._own(i))
