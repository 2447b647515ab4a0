"""Presets: named, tested combinations of agent and topology, and the defaults that follow
from a topology."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """A named, tested combination of agent and topology, with the values it changes."""

    agent: str
    topology: str
    paper: str
    overrides: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # Defaults tuned on CartPole-v1.
    "apex": Preset("dqn", "apex", "Horgan et al. 2018"),
    "gorila": Preset("dqn", "gorila", "Nair et al. 2015"),
    "sync": Preset("dqn", "sync", "data-parallel SGD; local SGD / parameter averaging"),
    "seed": Preset("dqn", "seed", "Espeholt et al. 2020"),
    # R2D2 as published: apex's topology, recurrent sequences (AGENT_DEFAULTS).
    "r2d2": Preset("r2d2", "apex", "Kapturowski et al. 2019"),
    "impala": Preset("actor_critic", "impala", "Espeholt et al. 2018"),
    "a3c": Preset("actor_critic", "a3c", "Mnih et al. 2016"),
}

AGENT_TOPOLOGIES: dict[str, tuple[str, ...]] = {"dqn": ("apex", "gorila", "sync", "seed"), "r2d2": ("apex", "seed"),
                                                "actor_critic": ("impala", "a3c")}
"""Topologies each agent runs on."""

AGENT_DEFAULTS: dict[str, dict[str, Any]] = {
    # R2D2's Atari settings (Kapturowski et al. 2019, table 2), on any topology it runs on
    # (``--preset r2d2``, or ``--preset seed --agent r2d2`` as SEED RL runs it).
    "r2d2": {"actor": {"n_step": 5, "chunk_size": 8},
             "learner": {"gamma": 0.997, "batch_size": 32, "batches_per_sample": 1, "learning_rate": 1e-4,
                         "loss": "mse", "max_grad_norm": 40.0, "target_update_period": 2500},
             "replay": {"priority_exponent": 0.9, "importance_sampling_exponent": 0.6, "capacity": 20_000,
                        "min_replay_size": 500, "samples_per_insert": 0.0}},
}
"""Defaults that follow from the agent (under the topology's, the preset's and the user's values)."""

TOPOLOGY_DEFAULTS: dict[str, dict[str, Any]] = {
    # Ape-X: one learner that owns the optimizer and publishes parameters.
    "apex": {},
    # Gorila: several learners push gradients computed on the parameters they last pulled;
    # the parameter server applies them with its own optimizer.
    "gorila": {"learner": {"num_learners": 2, "batches_per_sample": 1}},
    # Synchronous data-parallel learners (all-reduce every step, or local SGD + averaging).
    "sync": {"learner": {"num_learners": 2, "sync_mode": "allreduce", "batches_per_sample": 1}},
    # SEED RL: Ape-X's learning step; each env worker's envs in two halves of 4 (double
    # buffering). A pass is due once one half of every worker waits (inference.max_batch's
    # default), so that the halves do not fall into step with each other.
    "seed": {"env": {"envs_per_actor": 8}},
    # IMPALA: unrolls through a bounded FIFO (each read once; a full queue pauses the actors)
    # to one learner that publishes after every update. Sizes in unrolls.
    "impala": {"replay": {"kind": "fifo", "capacity": 256, "min_replay_size": 32, "samples_per_insert": 0.0},
               "actor": {"chunk_size": 16},
               "learner": {"batch_size": 32, "batches_per_sample": 1, "publish_period": 1, "learning_rate": 1e-3,
                           "max_grad_norm": 40.0}},
    # A3C: M workers, each an actor and a learner in one process (colocate), reading its own
    # actor's FIFO pool of rollouts (t_max = unroll_length steps of each of its envs).
    # On Ray each worker's actor and learner are Ray actors of their own, and the shards
    # (one per worker) are the pools.
    "a3c": {"colocate": True, "actor": {"num_actors": 2, "chunk_size": 4}, "ray": {"replay_shards": 2},
            "replay": {"kind": "fifo", "placement": "per_actor", "capacity": 64, "min_replay_size": 8,
                       "samples_per_insert": 0.0},
            "learner": {"num_learners": 2, "batch_size": 4, "batches_per_sample": 1, "learning_rate": 1e-3,
                        "max_grad_norm": 40.0}},
}
"""Defaults that follow from the topology (applied under the preset and the user's values)."""
