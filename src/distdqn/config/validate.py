"""Validation of an :class:`~distdqn.config.schema.ExperimentConfig`: every check names the
dotted key, the value and what is allowed (:class:`~distdqn.config.schema.ConfigError`)."""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from distdqn.config.errors import ConfigError
from distdqn.config.presets import AGENT_TOPOLOGIES

_Config = Any
"""An :class:`~distdqn.config.schema.ExperimentConfig` (which validates itself with this
module when built, so this module does not import it back, not even for type checking)."""


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(key, value, allowed)


def _check_literals(obj: Any, prefix: str) -> None:
    hints = get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        if is_dataclass(value):
            _check_literals(value, key + ".")
            continue
        if get_origin(hint) is Literal:
            allowed = get_args(hint)
            _check(value in allowed, key, value, "one of " + ", ".join(map(str, allowed)))
        elif isinstance(value, float):
            # No setting means anything at NaN or infinity (null switches off those that can be off).
            _check(math.isfinite(value), key, value, "a finite number")


def validate(cfg: _Config) -> None:
    """Check every value; raise :class:`ConfigError` on the first invalid one.

    Includes the rate limiter's deadlock check: the error buffer must let at
    least one of insert or sample proceed at any time.
    """
    _check_literals(cfg, "")
    allowed = AGENT_TOPOLOGIES[cfg.agent]
    if cfg.topology not in allowed:
        raise ConfigError("topology", cfg.topology, ", ".join(allowed),
                          message=f"invalid config: agent={cfg.agent!r} with topology={cfg.topology!r}; "
                                  f"allowed with agent {cfg.agent}: topology one of {', '.join(allowed)}")
    if cfg.agent in ("dqn", "r2d2"):
        _check(cfg.replay.kind != "fifo", "replay.kind", cfg.replay.kind,
               "prioritized or uniform with agent dqn (fifo reads each item once: for actor_critic)")
    else:
        _check(cfg.replay.kind != "prioritized", "replay.kind", cfg.replay.kind,
               f"fifo or uniform with agent {cfg.agent} (its loss gives no priorities)")
    if cfg.replay.kind == "fifo":  # the queue paces both sides: a limiter would wait on reads that cannot come
        _check(cfg.replay.samples_per_insert == 0, "replay.samples_per_insert", cfg.replay.samples_per_insert,
               "0 with replay.kind fifo (each item is read once; a full queue pauses the actors)")
    pos = "an integer > 0"
    _check(cfg.total_env_steps > 0, "total_env_steps", cfg.total_env_steps, pos)
    _check(cfg.checkpoint_period >= 0, "checkpoint_period", cfg.checkpoint_period, "an integer >= 0")
    _check(cfg.keep_checkpoints >= 1, "keep_checkpoints", cfg.keep_checkpoints, "an integer >= 1")
    _check(cfg.log_period > 0, "log_period", cfg.log_period, "seconds > 0")
    _check(cfg.serial_log_steps > 0, "serial_log_steps", cfg.serial_log_steps, pos)
    _check(cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    e = cfg.env
    _check(bool(e.id), "env.id", e.id, "a Gymnasium environment id")
    _check(e.envs_per_actor >= 1, "env.envs_per_actor", e.envs_per_actor, pos)
    _check(e.envpool_threads >= 0, "env.envpool_threads", e.envpool_threads, "an integer >= 0")
    _check(e.max_episode_steps is None or e.max_episode_steps > 0, "env.max_episode_steps",
           e.max_episode_steps, "null or an integer > 0")
    _check(e.frame_skip >= 1, "env.frame_skip", e.frame_skip, pos)
    _check(e.noop_max >= 0, "env.noop_max", e.noop_max, "an integer >= 0")
    _check(e.frame_stack >= 1, "env.frame_stack", e.frame_stack, pos)
    _check(0.0 <= e.sticky_actions < 1.0, "env.sticky_actions", e.sticky_actions, "0 <= p < 1")
    for m in e.imports:
        _check(isinstance(m, str) and bool(m.strip()), "env.imports", e.imports, "a list of module names")
    n = cfg.network
    _check(len(n.hidden_sizes) >= 1 and all(int(h) > 0 for h in n.hidden_sizes),
           "network.hidden_sizes", n.hidden_sizes, "a non-empty list of positive integers")
    r = cfg.replay
    _check(r.capacity >= 1, "replay.capacity", r.capacity, pos)
    _check(r.priority_exponent >= 0, "replay.priority_exponent", r.priority_exponent, ">= 0")
    _check(0 <= r.importance_sampling_exponent <= 1, "replay.importance_sampling_exponent",
           r.importance_sampling_exponent, "0 <= beta <= 1")
    _check(r.beta_anneal_updates >= 1, "replay.beta_anneal_updates", r.beta_anneal_updates, pos)
    _check(r.priority_epsilon > 0, "replay.priority_epsilon", r.priority_epsilon, "> 0")
    _check(r.samples_per_insert >= 0, "replay.samples_per_insert", r.samples_per_insert, ">= 0")
    lr = cfg.learner
    _check(lr.batch_size >= 1, "learner.batch_size", lr.batch_size, pos)
    _check(lr.batches_per_sample >= 1, "learner.batches_per_sample", lr.batches_per_sample, pos)
    _check(lr.batches_per_sample == 1 or cfg.topology in ("apex", "seed"), "learner.batches_per_sample",
           lr.batches_per_sample, f"1 with topology {cfg.topology} (several batches per sample is for apex)")
    _check(lr.batch_size <= r.min_replay_size <= r.capacity, "replay.min_replay_size",
           r.min_replay_size, f"learner.batch_size ({lr.batch_size}) <= value <= replay.capacity ({r.capacity})")
    if r.samples_per_insert > 0:
        buf = error_buffer(cfg)
        need = max(r.samples_per_insert, sample_unit(cfg))
        _check(buf >= need, "replay.error_buffer", r.error_buffer,
               f">= max(samples_per_insert, transitions per learning step) = {need}, or the rate limiter "
               "can deadlock (neither an insert nor a sample would be allowed)")
    a = cfg.actor
    _check(a.num_actors >= 1, "actor.num_actors", a.num_actors, pos)
    _check(a.n_step >= 1, "actor.n_step", a.n_step, pos)
    for k in ("epsilon_start", "epsilon_end", "apex_epsilon"):
        v = getattr(a, k)
        _check(0.0 <= v <= 1.0, f"actor.{k}", v, "0 <= epsilon <= 1")
    _check(a.epsilon_decay_steps >= 1, "actor.epsilon_decay_steps", a.epsilon_decay_steps, pos)
    _check(a.apex_alpha >= 0, "actor.apex_alpha", a.apex_alpha, ">= 0")
    _check(a.param_sync_period >= 1, "actor.param_sync_period", a.param_sync_period, pos)
    _check(a.chunk_size >= 1, "actor.chunk_size", a.chunk_size, pos)
    _check(lr.learning_rate > 0 and math.isfinite(lr.learning_rate), "learner.learning_rate",
           lr.learning_rate, "a finite number > 0")
    _check(0.0 < lr.gamma <= 1.0, "learner.gamma", lr.gamma, "0 < gamma <= 1")
    _check(lr.max_grad_norm is None or lr.max_grad_norm > 0, "learner.max_grad_norm",
           lr.max_grad_norm, "null or > 0")
    _check(lr.target_update_period >= 1, "learner.target_update_period", lr.target_update_period, pos)
    _check(lr.tau is None or 0.0 < lr.tau <= 1.0, "learner.tau", lr.tau, "null or 0 < tau <= 1")
    _check(lr.publish_period >= 1, "learner.publish_period", lr.publish_period, pos)
    _check(lr.torch_threads >= 1, "learner.torch_threads", lr.torch_threads, pos)
    _check(lr.num_learners >= 1, "learner.num_learners", lr.num_learners, pos)
    if cfg.topology in ("apex", "seed"):
        _check(lr.num_learners == 1, "learner.num_learners", lr.num_learners,
               f"1 with topology {cfg.topology} (use --preset gorila or sync for several learners)")
    if cfg.topology == "a3c":  # worker i: actor i and learner i, reading actor i's own pool
        _check(a.num_actors == lr.num_learners, "actor.num_actors", a.num_actors,
               f"equal to learner.num_learners ({lr.num_learners}) with topology a3c (one actor per worker)")
        if cfg.runtime == "ray":  # the shards are the workers' pools (placement does not apply)
            _check(cfg.ray.replay_shards == lr.num_learners, "ray.replay_shards", cfg.ray.replay_shards,
                   f"equal to learner.num_learners ({lr.num_learners}) with topology a3c on Ray (one shard per "
                   "worker)")
        else:
            _check(r.placement == "per_actor", "replay.placement", r.placement,
                   "per_actor with topology a3c (each worker reads its own actor's rollouts)")
    if cfg.colocate:
        _check(cfg.topology in ("gorila", "sync", "a3c"), "colocate", cfg.colocate,
               "false with topology apex or impala (colocation pairs an actor with each gorila/sync/a3c learner)")
        _check(a.num_actors == lr.num_learners, "actor.num_actors", a.num_actors,
               f"equal to learner.num_learners ({lr.num_learners}) when colocate is true")
    _check(lr.average_period >= 1, "learner.average_period", lr.average_period, pos)
    _check(cfg.parameter_server.max_staleness >= 0, "parameter_server.max_staleness",
           cfg.parameter_server.max_staleness, "an integer >= 0")
    ry = cfg.ray
    _check(ry.replay_shards >= 1, "ray.replay_shards", ry.replay_shards, pos)
    _check(ry.max_restarts >= -1, "ray.max_restarts", ry.max_restarts, "-1 (unlimited) or an integer >= 0")
    _check(ry.num_cpus is None or ry.num_cpus >= 1, "ray.num_cpus", ry.num_cpus, "null or an integer > 0")
    if cfg.runtime == "ray":
        _check(not cfg.colocate or cfg.topology == "a3c", "colocate", cfg.colocate, "false with runtime ray")
        _check(r.placement == "central" or cfg.topology == "a3c", "replay.placement", r.placement,
               "central with runtime ray (use ray.replay_shards to spread the replay)")
        _check(r.min_replay_size >= lr.batch_size * ry.replay_shards, "replay.min_replay_size", r.min_replay_size,
               f">= learner.batch_size x ray.replay_shards ({lr.batch_size * ry.replay_shards}): "
               "every shard must hold a batch")
    r2 = cfg.r2d2
    for key in ("sequence_length", "sequence_period", "lstm_size"):
        _check(getattr(r2, key) >= 1, f"r2d2.{key}", getattr(r2, key), pos)
    _check(r2.burn_in >= 0, "r2d2.burn_in", r2.burn_in, "an integer >= 0")
    _check(0.0 <= r2.priority_eta <= 1.0, "r2d2.priority_eta", r2.priority_eta, "0 <= eta <= 1")
    _check(r2.rescale_eps > 0, "r2d2.rescale_eps", r2.rescale_eps, "a number > 0")
    if cfg.agent == "r2d2":
        _check(r2.sequence_period <= r2.sequence_length + r2.burn_in, "r2d2.sequence_period", r2.sequence_period,
               f"<= r2d2.burn_in + r2d2.sequence_length ({r2.burn_in + r2.sequence_length}): every step in a sequence")
    inf = cfg.inference
    _check(inf.max_batch is None or inf.max_batch >= 1, "inference.max_batch", inf.max_batch,
           "an integer > 0, or null (one half of every worker)")
    _check(inf.max_wait_ms >= 0, "inference.max_wait_ms", inf.max_wait_ms, "a number of ms >= 0")
    _check(inf.splits in (1, 2), "inference.splits", inf.splits, "1 or 2")
    if cfg.topology == "seed":
        _check(cfg.env.envs_per_actor % inf.splits == 0, "env.envs_per_actor", cfg.env.envs_per_actor,
               f"a multiple of inference.splits ({inf.splits}) with topology seed (each worker's envs are "
               "split into equal halves)")
    ev = cfg.eval
    _check(ev.eval_period >= 0, "eval.eval_period", ev.eval_period, "an integer >= 0")
    _check(ev.eval_episodes >= 1, "eval.eval_episodes", ev.eval_episodes, pos)
    _check(0.0 <= ev.epsilon <= 1.0, "eval.epsilon", ev.epsilon, "0 <= epsilon <= 1")


def sample_unit(cfg: _Config) -> int:
    """Transitions sampled at once: ``batches_per_sample`` batches (apex), or one per learner
    for a synchronous round."""
    m = cfg.learner.num_learners if cfg.topology == "sync" else cfg.learner.batches_per_sample
    return cfg.learner.batch_size * m


def inference_batch(cfg: _Config) -> int:
    """``inference.max_batch``, resolving the ``None`` default: one half of every worker."""
    inf = cfg.inference
    if inf.max_batch is not None:
        return int(inf.max_batch)
    return max(1, cfg.actor.num_actors * cfg.env.envs_per_actor // inf.splits)


def error_buffer(cfg: _Config) -> float:
    """The rate limiter's error buffer, resolving the ``None`` default
    (4 x max(samples_per_insert, transitions per learning step))."""
    r = cfg.replay
    if r.error_buffer is not None:
        return float(r.error_buffer)
    return 4.0 * max(r.samples_per_insert, sample_unit(cfg))
