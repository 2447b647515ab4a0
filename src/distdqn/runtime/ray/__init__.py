"""Ray runtime: every role a Ray actor, on one machine or a Ray cluster.

Roles (each a plain class, made a Ray actor by :func:`run_ray`):

- :class:`~distdqn.runtime.ray.roles.ActorRole` (one per ``actor.num_actors``, 1 CPU, optionally one unit of the
  custom resource ``ray.actor_resource``, spread over nodes): steps its vector env in a
  background thread, pulls parameters from the parameter server when its version is
  older, and inserts whole chunks of n-step transitions into its replay shard, one call
  in flight, each numbered ``(actor_id, incarnation, seq)``.
- :class:`~distdqn.runtime.ray.shard.ReplayShardRole` (``ray.replay_shards`` of them, asyncio actors): a
  :class:`~distdqn.runtime.ray.shard.ShardCore` (a :class:`~distdqn.replay.Replay` with its rate limiter, plus insert
  de-duplication and transition accounting). An insert the rate limiter refuses waits
  inside the shard until the learner has sampled enough, so the actor's call returns late:
  that is the back-pressure that keeps ``samples_per_insert``.
- :class:`~distdqn.runtime.ray.learner.LearnerRole` (``learner.num_learners``; a GPU when the cluster has one): runs the
  topology's own learning step (:mod:`distdqn.topologies`) through ports over Ray
  (:mod:`distdqn.runtime.ray.learner`): draws ``learner.batches_per_sample`` batches at a
  time from the shards, two requests in flight, each draw from one shard chosen in
  proportion to its priority mass (importance weights recomputed over all shards); sends
  new priorities back without waiting. Ape-X: applies its updates and publishes parameters
  every ``publish_period`` updates. Gorila: pushes gradients to the parameter server and
  takes the newer parameters it answers with.
- :class:`~distdqn.runtime.ray.roles.ParameterServerRole`: the :class:`~distdqn.roles.parameter_server.ParameterServer`;
  each new version is ``ray.put`` once, when first asked for, and handed out as an object
  reference, so every actor reads the same object from the object store.

The driver (the ``distdqn train`` process) runs the one :class:`~distdqn.runtime.driver.Driver`
with stand-ins for the remote roles (:mod:`distdqn.runtime.ray.runtime`): it polls each
role's ``stats`` (the shards' transition accounting, the learners' update counts),
evaluates greedily, logs, writes checkpoints (pulling each role's state) and supervises.

Failures: roles are created with ``max_restarts=ray.max_restarts``. A restarted actor
explores with a fresh seed and the newest parameters (``actor_restarts``). A restarted
learner waits until the driver hands it its state from the newest checkpoint (or, before
the first checkpoint, the parameter server's newest parameters); a restarted replay shard
gets its contents back from the newest checkpoint when ``checkpoint_replay`` is on (else
it refills); a restarted parameter server gets its checkpointed state, and every client
notices its new incarnation and re-pulls. A role unreachable for ``ROLE_LOST_S`` seconds,
or a learner that reports a non-finite loss, ends the run (non-zero exit, message).

Ray moves and serializes everything; distdqn opens no socket of its own and unpickles
nothing outside Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distdqn.config import ExperimentConfig
from distdqn.envs import EnvSpaces
from distdqn.runtime.codec import batch_from_numpy, batch_to_numpy
from distdqn.runtime.driver import drive
from distdqn.runtime.ray.driver import _init_ray
from distdqn.runtime.ray.learner import _global_weights
from distdqn.runtime.ray.runtime import RayRuntime
from distdqn.runtime.ray.shard import ShardCore

__all__ = ["RayRuntime", "ShardCore", "_global_weights", "_init_ray", "batch_from_numpy", "batch_to_numpy",
           "run_ray"]


def run_ray(cfg: ExperimentConfig, spaces: EnvSpaces, run_dir: Path, resume: bool = False,
            collect_only: bool = False, on_poll: Any = None) -> dict[str, Any]:
    """Train with every role a Ray actor. Returns the summary (also ``summary.json``).

    Args:
        collect_only: no learners (benchmarking collection); needs ``replay.samples_per_insert == 0``.
        on_poll: called as ``on_poll(driver, roles)`` after every supervision pass (tests use it to
            break things mid-run).

    Raises:
        NonFiniteLossError: a learner met a NaN/inf loss.
        RunAborted: a role was lost beyond restart.
    """
    return drive(cfg, spaces, run_dir, RayRuntime(cfg, spaces, collect_only, on_poll), resume)
