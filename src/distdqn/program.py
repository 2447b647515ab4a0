"""Which roles a program has and how each is built: all wiring and seed derivation in one place."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
from torch import nn

from distdqn.agents import make_agent
from distdqn.agents.base import Agent
from distdqn.config import ConfigError, ExperimentConfig, error_buffer, sample_unit
from distdqn.core import ItemSpec, flat_params
from distdqn.envs import EnvSpaces, env_spaces, is_atari
from distdqn.replay import Replay, make_replay
from distdqn.replay.frame_storage import MAX_SEGMENTS, default_frame_capacity, frame_storage_bytes
from distdqn.replay.pools import ReplayPools
from distdqn.roles.actor import Actor, ActorSpec
from distdqn.roles.env_worker import EnvWorker
from distdqn.roles.evaluator import Evaluator
from distdqn.roles.inference import SEED_COLUMNS, InferenceServer
from distdqn.roles.learner import Learner, resolve_device
from distdqn.roles.parameter_server import ParameterServer


def derive_seed(root: int, *path: int) -> int:
    """A 31-bit seed for the component at ``path`` (e.g. ``(ACTOR, actor_id, generation)``),
    derived from the root seed with :class:`numpy.random.SeedSequence`."""
    return int(np.random.SeedSequence([root, *path]).generate_state(1)[0] & 0x7FFFFFFF)


# Seed namespaces.
NET, ACTOR, REPLAY, EVAL, ENV_WORKER = 1, 2, 3, 4, 5


def frame_dedup_enabled(cfg: ExperimentConfig, spaces: EnvSpaces) -> bool:
    """Whether actors send frames and the replay stores each frame once (``replay.frame_dedup``).

    ``auto``: on when the observations are uint8 ``(env.frame_stack, H, W)`` stacks with
    ``env.frame_stack > 1`` of an env known to build them with ``FrameStackObservation``:
    Atari ids (:func:`distdqn.envs.make_env`) and
    :data:`distdqn.testing.envs.FRAME_STACKED_IDS`. ``on``: forced (3-D observations
    needed; the actors check at every step that the observations are frame stacks).

    Raises:
        ConfigError: ``on`` with observations that are not 3-D.
    """
    on = _frame_dedup_wanted(cfg, spaces)
    r = cfg.r2d2
    if on and cfg.agent == "r2d2" and r.burn_in + r.sequence_length + 1 >= MAX_SEGMENTS:
        raise ConfigError("r2d2.sequence_length", r.sequence_length,
                          f"burn_in + sequence_length < {MAX_SEGMENTS - 1} with frame deduplication (a sequence's "
                          "frames must come from the stream's last chunks), or replay.frame_dedup=off")
    return on


def _frame_dedup_wanted(cfg: ExperimentConfig, spaces: EnvSpaces) -> bool:
    mode = cfg.replay.frame_dedup
    shape = tuple(spaces.obs_shape)
    if mode == "off" or (mode == "auto" and cfg.agent == "actor_critic"):  # unrolls keep whole observations
        return False
    if mode == "on":
        if cfg.agent == "actor_critic":
            raise ConfigError("replay.frame_dedup", mode, f"off or auto with agent {cfg.agent} (its items keep "
                                                          "whole observations)")
        if len(shape) != 3:
            raise ConfigError("replay.frame_dedup", mode,
                              f"off or auto for observations of shape {shape} (on needs (stack, H, W) frame stacks)")
        return True
    k = cfg.env.frame_stack
    if not (len(shape) == 3 and shape[0] == k and k > 1 and np.dtype(spaces.obs_dtype) == np.uint8):
        return False
    if is_atari(cfg.env.id):
        return True
    if cfg.env.id.startswith("distdqn/"):
        from distdqn.testing.envs import FRAME_STACKED_IDS

        return cfg.env.id in FRAME_STACKED_IDS
    return False


def check_replay_memory(cfg: ExperimentConfig, spaces: EnvSpaces, memory_bytes: int | None = None) -> int:
    """The bytes a full replay takes: ``replay.capacity`` x the item spec's size, or for a
    frame-deduplicating replay its frame ring and item slots
    (:func:`~distdqn.replay.frame_storage.frame_storage_bytes`).

    Raises:
        ConfigError: it exceeds 80% of this machine's memory (``memory_bytes``; default the
            physical memory), naming ``replay.capacity`` and the largest that fits.
    """
    spec, capacity = item_spec(cfg, spaces), cfg.replay.capacity
    if spec.frame_fields():
        total = frame_storage_bytes(capacity, spec, frame_ring(cfg, spaces, capacity))
    else:
        total = capacity * sum(int(np.prod(f.shape)) * f.np_dtype.itemsize for _, f in spec.fields)
    per_item = -(-total // max(capacity, 1))
    if memory_bytes is None:
        try:
            memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not a POSIX system: no check
            return total
    fits = int(0.8 * memory_bytes) // max(per_item, 1)
    if capacity > fits:
        raise ConfigError("replay.capacity", capacity,
                          f"at most {fits:,} here: each item takes {per_item:,} bytes, so {capacity:,} "
                          f"need {total / 2**30:.1f} GiB of the {memory_bytes / 2**30:.1f} GiB this machine has")
    return total


def frame_ring(cfg: ExperimentConfig, spaces: EnvSpaces, capacity: int) -> int:
    """Frame slots of a frame-deduplicating replay of ``capacity`` items: the agent's
    ``frame_capacity`` (items of more than one new frame: R2D2's sequences), else
    :func:`~distdqn.replay.frame_storage.default_frame_capacity`."""
    ring = getattr(build_agent(cfg, spaces), "frame_capacity", default_frame_capacity)
    return int(ring(capacity))


def build_agent(cfg: ExperimentConfig, spaces: EnvSpaces) -> Agent:
    """The agent ``cfg.agent`` (:mod:`distdqn.agents`) for this env."""
    return make_agent(cfg, spaces)


def build_network(cfg: ExperimentConfig, spaces: EnvSpaces, seed_path: tuple[int, ...] = (NET,)) -> nn.Module:
    """A fresh network of the agent, its initial weights seeded from ``seed_path``."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(derive_seed(cfg.seed, *seed_path))
    try:
        return build_agent(cfg, spaces).make_network()
    finally:
        torch.random.set_rng_state(gen_state)


def item_spec(cfg: ExperimentConfig, spaces: EnvSpaces) -> ItemSpec:
    """The agent's item spec, frame-stack fields marked when :func:`frame_dedup_enabled`."""
    return build_agent(cfg, spaces).item_spec(frame_dedup_enabled(cfg, spaces))


def build_actor(cfg: ExperimentConfig, spaces: EnvSpaces, actor_id: int, generation: int = 0) -> Actor:
    """Actor ``actor_id``; ``generation`` counts restarts so a restarted actor explores anew."""
    spec = ActorSpec(
        actor_id=actor_id,
        num_actors=cfg.actor.num_actors,
        seed=derive_seed(cfg.seed, ACTOR, actor_id, generation),
        gamma=cfg.learner.gamma,
        compute_priorities=cfg.replay.kind == "prioritized" and cfg.replay.initial_priority == "actor",
        frame_dedup=frame_dedup_enabled(cfg, spaces),
    )
    return Actor(spec, cfg.env, cfg.actor, build_agent(cfg, spaces), build_network(cfg, spaces))


def build_env_worker(cfg: ExperimentConfig, worker_id: int, generation: int = 0) -> EnvWorker:
    """SEED env worker ``worker_id`` (``actor.num_actors`` of them), its envs in
    ``inference.splits`` halves; ``generation`` counts its restarts."""
    rng = np.random.default_rng([derive_seed(cfg.seed, ENV_WORKER, worker_id, generation), 7])
    return EnvWorker(cfg.env, cfg.inference.splits, rng, worker_id)


def build_inference_server(cfg: ExperimentConfig, spaces: EnvSpaces, generation: int = 0) -> InferenceServer:
    """SEED's inference server: one slot per half of each env worker (slot ``w * splits + h``),
    on the learner's device; a slot's seed follows its worker's generation."""
    num_slots = cfg.actor.num_actors * cfg.inference.splits
    compute = cfg.replay.kind == "prioritized" and cfg.replay.initial_priority == "actor"
    dedup = frame_dedup_enabled(cfg, spaces)

    def spec_of(slot: int, worker_generation: int) -> ActorSpec:
        return ActorSpec(actor_id=slot, num_actors=num_slots,
                         seed=derive_seed(cfg.seed, ACTOR, slot, generation, worker_generation),
                         gamma=cfg.learner.gamma, compute_priorities=compute, frame_dedup=dedup)

    return InferenceServer(cfg, build_agent(cfg, spaces), build_network(cfg, spaces), num_slots, spec_of,
                           learner_device(cfg, spaces))


def metric_columns(cfg: ExperimentConfig, spaces: EnvSpaces) -> tuple[str, ...]:
    """Metrics-row columns beyond the common ones: the agent's, and the inference server's
    with topology seed."""
    cols = tuple(getattr(build_agent(cfg, spaces), "metric_columns", ()))
    return cols + (SEED_COLUMNS if cfg.topology == "seed" else ())


def learner_device(cfg: ExperimentConfig, spaces: EnvSpaces) -> torch.device:
    """Where the learner runs: ``learner.device`` resolved for this env's network
    (:func:`distdqn.roles.learner.resolve_device`)."""
    return resolve_device(cfg.learner.device, build_agent(cfg, spaces).network_kind())


def build_learner(cfg: ExperimentConfig, spaces: EnvSpaces) -> Learner:
    return Learner(cfg.learner, build_network(cfg, spaces), learner_device(cfg, spaces),
                   loss=build_agent(cfg, spaces).loss())


def build_replay(cfg: ExperimentConfig, spaces: EnvSpaces, shard: int = 0, num_shards: int = 1) -> Replay | ReplayPools:
    """The central replay, or one pool per actor (``replay.placement: per_actor``), for the
    agent's items (frame-stack fields marked when :func:`frame_dedup_enabled`).

    With ``num_shards > 1`` (the Ray runtime's ``ray.replay_shards``) this is shard
    ``shard``: ``capacity`` and ``min_replay_size`` divided among the shards (rounded up),
    its own seed."""
    seed = derive_seed(cfg.seed, REPLAY) if num_shards == 1 else derive_seed(cfg.seed, REPLAY, shard)
    rcfg = dataclasses.replace(cfg.replay, error_buffer=error_buffer(cfg))
    if num_shards > 1:
        rcfg = dataclasses.replace(rcfg, capacity=-(-rcfg.capacity // num_shards),
                                   min_replay_size=-(-rcfg.min_replay_size // num_shards))
    unit = sample_unit(cfg)  # what one learning step samples: M batches for a sync round
    spec = item_spec(cfg, spaces)
    if cfg.replay.placement == "per_actor":
        return ReplayPools(rcfg, unit, spec, seed, num_pools=cfg.actor.num_actors)
    frames = frame_ring(cfg, spaces, rcfg.capacity) if spec.frame_fields() else None
    return make_replay(rcfg, unit, spec, seed, frame_capacity=frames)


def build_evaluator(cfg: ExperimentConfig, spaces: EnvSpaces) -> Evaluator:
    agent = build_agent(cfg, spaces)
    stateful = getattr(agent, "eval_policy", None)
    return Evaluator(cfg.env, build_network(cfg, spaces), derive_seed(cfg.seed, EVAL), cfg.eval.epsilon,
                     trace=cfg.actor.trace_network and stateful is None, greedy=agent.greedy, stateful=stateful)


def build_parameter_server(cfg: ExperimentConfig, spaces: EnvSpaces) -> ParameterServer:
    """Publish-mode parameter server (apex, sync), or gradient mode with its own optimizer
    and target network (gorila). Initial parameters are the seeded network's."""
    net = build_network(cfg, spaces)
    initial = flat_params(net)
    if cfg.topology in ("gorila", "a3c"):
        return ParameterServer(initial, network=net, learner_cfg=cfg.learner, ps_cfg=cfg.parameter_server)
    return ParameterServer(initial)


def spaces_for(cfg: ExperimentConfig) -> EnvSpaces:
    """Observation/action spaces of the configured env (raises :class:`distdqn.envs.EnvSpecError`)."""
    return env_spaces(cfg.env)
