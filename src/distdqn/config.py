"""Typed, frozen experiment configuration: one dataclass per role, composed into
:class:`ExperimentConfig`, validated when built.

Every invalid value raises :class:`ConfigError` naming the dotted key, the value
and what is allowed, before any process starts. Configs are loaded from YAML
(:func:`load_yaml`), overridden with ``key=value`` strings (:func:`apply_overrides`)
and written back out resolved (:func:`to_dict`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """An invalid configuration value.

    Attributes:
        key: dotted key, e.g. ``replay.capacity``.
        value: the offending value.
        allowed: human-readable description of what is allowed.
    """

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"invalid config: {key}={value!r}; allowed: {allowed}")


@dataclass(frozen=True)
class EnvConfig:
    """Which environment, how many copies per actor, and Atari preprocessing."""

    id: str = "CartPole-v1"
    """Gymnasium id. Needs a Discrete action space and a Box observation space.
    ``ALE/...`` ids get the standard Atari preprocessing below."""
    envs_per_actor: int = 4
    """Sub-environments per actor, stepped as one vector env with one batched forward."""
    backend: Literal["gymnasium", "envpool"] = "gymnasium"
    """``gymnasium``: ``SyncVectorEnv`` of Gymnasium envs (each episode seeded; exact resume).
    ``envpool``: EnvPool's C++ envs (``pip install envpool``), same preprocessing semantics,
    seeded once per vector env, so a resumed run starts new episodes."""
    envpool_threads: int = 1
    """envpool: worker threads of each actor's EnvPool (0: EnvPool's default, one per
    sub-env). Actors are already one process each; more threads than cores slow it down."""
    max_episode_steps: int | None = None
    """Override of the env's time limit (episodes end *truncated* there). None: env default."""
    frame_skip: int = 4
    """Atari: frames per agent step (max-pooled over the last two)."""
    noop_max: int = 30
    """Atari: up to this many no-op actions after reset."""
    frame_stack: int = 4
    """Atari: stacked 84x84 grayscale frames per observation."""
    episodic_life: bool = True
    """Atari: a lost life ends the episode as *terminated* for learning (the game goes on)."""
    clip_rewards: bool = True
    """Atari: rewards clipped to their sign, {-1, 0, 1}."""
    sticky_actions: float = 0.0
    """Atari: ALE repeat_action_probability (v5 default is 0.25; DQN papers used 0)."""


@dataclass(frozen=True)
class NetworkConfig:
    """Q-network architecture (see :mod:`distdqn.networks`)."""

    kind: Literal["auto", "mlp", "nature_cnn"] = "auto"
    """``auto``: Nature CNN for image observations (3-D), MLP otherwise."""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """MLP hidden layer widths."""
    dueling: bool | None = None
    """Dueling head, Q = V + A - mean(A) (Wang et al. 2016, eq. 9). None (default): on for
    the Nature CNN (as in Ape-X on Atari), off for the MLP (on CartPole the same env steps
    to solve in a serial-runtime sweep, and 1.3-1.5x the updates per second on 2 cores)."""


@dataclass(frozen=True)
class ReplayConfig:
    """Experience replay and its rate limiter (see :mod:`distdqn.replay`)."""

    kind: Literal["prioritized", "uniform"] = "prioritized"
    placement: Literal["central", "per_actor"] = "central"
    """One central replay, or one pool per actor that learners sample in proportion to size."""
    capacity: int = 100_000
    """Transitions held; the oldest is overwritten first."""
    priority_exponent: float = 0.6
    """alpha in P(i) = p_i^alpha / sum_k p_k^alpha (Schaul et al. 2016, eq. 1)."""
    importance_sampling_exponent: float = 0.4
    """beta at the start; annealed linearly to 1 over ``beta_anneal_updates``."""
    beta_anneal_updates: int = 10_000
    """Learner updates over which beta goes from its start value to 1."""
    priority_epsilon: float = 1e-3
    """Added to |TD error| so no transition gets zero priority."""
    initial_priority: Literal["max", "actor"] = "actor"
    """New items at the max priority seen so far, or at the |TD error| the actor computed (Ape-X)."""
    min_replay_size: int = 1_000
    """No sampling before the replay holds this many transitions."""
    samples_per_insert: float = 16.0
    """Target replay ratio: sampled transitions per inserted transition. 0 disables limiting."""
    error_buffer: float | None = None
    """Allowed drift of inserts*samples_per_insert - samples around its start.
    None: max(samples_per_insert, batch_size) * 4."""
    frame_dedup: Literal["auto", "on", "off"] = "auto"
    """Store each frame of stacked-frame observations once (actors send frames, not stacks;
    stacks are rebuilt at sample time; about 1/8 of the memory). ``auto``: on for Atari ids
    with ``env.frame_stack > 1`` (uint8 ``(frame_stack, H, W)`` observations); ``on`` needs
    observations that are ``FrameStackObservation`` stacks (checked by the actors)."""


@dataclass(frozen=True)
class ActorConfig:
    """Actors: how many, exploration, n-step returns, parameter sync."""

    num_actors: int = 2
    """Actor processes (local runtime) or actor objects (serial runtime)."""
    n_step: int = 3
    """Steps in the n-step return R = sum_k gamma^k r_{t+k}."""
    epsilon_schedule: Literal["apex", "linear"] = "linear"
    """``apex``: fixed eps_i = base^(1 + alpha*i/(N-1)) over all N = actors x envs_per_actor
    sub-envs (Horgan et al. 2018, sec. 4.1). ``linear``: every env decays from
    ``epsilon_start`` to ``epsilon_end`` over ``epsilon_decay_steps`` total env steps."""
    epsilon_start: float = 1.0
    epsilon_end: float = 0.02
    epsilon_decay_steps: int = 20_000
    """Total env steps (all actors) of the linear decay."""
    apex_epsilon: float = 0.4
    apex_alpha: float = 7.0
    param_sync_period: int = 50
    """Actor steps (vector steps) between checks for newer parameters."""
    chunk_size: int = 256
    """Transitions per chunk sent to replay: at least this many, at most
    ``envs_per_actor * n_step`` more (windows are resolved per chunk, not per step). Each
    chunk costs a fixed overhead in both processes (a pipe write and read, thread wake-ups):
    on 2 cores CartPole collection ran about 0.86 of the bare loop's speed per actor with
    256 against 0.77-0.81 with 64, and the learner process used 7% of a core instead of 15%."""
    trace_network: bool = True
    """Act with a TorchScript trace of the Q-network (``torch.jit.trace``; the same function
    and parameters, less per-operator overhead). ``false``: act with the eager module."""


@dataclass(frozen=True)
class LearnerConfig:
    """Learner: loss, optimizer, target network."""

    batch_size: int = 64
    batches_per_sample: int = 4
    """``apex``: batches drawn from replay in one call; the learner takes one optimizer step
    on each in turn, then updates all their priorities at once. One call costs about as
    much as a single batch, so replay work per update falls (on 2 CPU cores, 16% -> 5% of
    an update); priorities reach the tree up to ``batches_per_sample - 1`` updates late,
    as with Ape-X's asynchronous replay. ``gorila`` and ``sync`` take 1."""
    learning_rate: float = 8e-3
    """Adam/RMSProp step size. The default is tuned on CartPole-v1 (serial-runtime sweeps:
    5e-3 needed a median of 15,000 env steps to solve against 20,000 with RL-Zoo's 2.3e-3
    over 15 seeds; 8e-3 a mean of 13,400 against 16,700 for 5e-3 over 20 seeds, the worst
    seed 20,000 against 30,000); Atari wants far less (configs/pong.yaml: 6.25e-5)."""
    optimizer: Literal["adam", "rmsprop"] = "adam"
    adam_epsilon: float = 1.5e-4
    gamma: float = 0.99
    loss: Literal["huber", "mse"] = "huber"
    double_dqn: bool = True
    """Double-DQN target (van Hasselt et al. 2016, eq. 4)."""
    max_grad_norm: float | None = 10.0
    """Clip the global gradient norm; None disables."""
    target_update_period: int = 100
    """Hard copy online -> target every this many updates (when ``tau`` is None)."""
    tau: float | None = None
    """Polyak averaging theta' <- tau*theta + (1-tau)*theta' every update instead of hard copies."""
    publish_period: int = 10
    """Updates between parameter publications to the parameter server."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: CUDA when available for the Nature CNN; an MLP learner stays on the CPU. A
    small MLP's update is bound by per-kernel launch cost: on an H100 machine the default
    CartPole learner made 408 updates/s on CUDA against 894 on one of its CPU cores."""
    torch_threads: int = 1
    """Intra-op threads of the learner process (small networks are fastest on 1)."""
    mixed_precision: bool = False
    """bf16 autocast for the learner's forward passes (loss and optimizer stay float32)."""
    flush_denormal: bool = True
    """CPU learner: denormal floats read and written as zero in its process
    (``torch.set_flush_denormal``). Adam's first moment of a unit whose gradient stays zero
    (a dead ReLU) decays through the denormal range, where x86 arithmetic is many times
    slower; on the default MLP the optimizer step took 140-175 us instead of about 90."""
    num_learners: int = 1
    """Learners (processes in the local runtime). ``apex`` has exactly one."""
    sync_mode: Literal["allreduce", "average"] = "allreduce"
    """``sync`` preset: all-reduce the gradients every step (identical learners), or take
    ``average_period`` local steps and then average the parameters."""
    average_period: int = 10
    """``sync_mode: average``: local updates between parameter averages."""
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend for ``sync``: auto = NCCL when every learner has a GPU, else gloo."""


@dataclass(frozen=True)
class ParameterServerConfig:
    """Parameter server in gradient mode (``gorila``): staleness bounds (Nair et al. 2015)."""

    max_staleness: int = 4
    """A gradient computed on parameters more than this many versions old is stale."""
    stale_policy: Literal["drop", "scale"] = "drop"
    """Stale gradients are dropped (counted), or applied scaled by 1/staleness."""


@dataclass(frozen=True)
class RayConfig:
    """The Ray runtime (``runtime: ray``): where to run and how to place and restart roles."""

    address: str | None = None
    """A running cluster to join (``ray start --head`` prints it, e.g. ``10.0.0.1:6379``, or
    ``auto``). None: start a private Ray instance on this machine for the run."""
    replay_shards: int = 1
    """Replay shards (Ray actors); actor i inserts into shard ``i % replay_shards`` and the
    learner draws each batch from one shard chosen in proportion to its priority mass."""
    max_restarts: int = 20
    """Restarts Ray may make of each role (actor, learner, replay shard, parameter server)
    after its process or node dies; -1: unlimited."""
    actor_resource: str | None = None
    """A custom resource (``ray start --resources='{"NAME": k}'``) each actor role takes
    one unit of, to place actors on chosen nodes. None: actors only take a CPU."""
    num_cpus: int | None = None
    """CPUs the private Ray instance advertises (no ``address``). None: enough for every role
    (this machine's cores, at least actors + learners + 1)."""
    dashboard: bool = False
    """Start Ray's dashboard with the private instance (off: one listener fewer)."""


@dataclass(frozen=True)
class EvalConfig:
    """Greedy evaluation."""

    eval_period: int = 2_500
    """Env steps between evaluations (0: only at the end)."""
    eval_episodes: int = 20
    target_return: float | None = 475.0
    """Stop training once the evaluation mean return reaches this. None: run all steps."""
    epsilon: float = 0.0
    """Exploration during evaluation (0: greedy)."""
    separate_process: bool = True
    """Local runtime: evaluate in a process of its own while learning goes on (a due
    evaluation waits while one is running). ``false``: in the learner process, which pauses
    learning meanwhile. The serial and Ray runtimes always evaluate in line."""


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: topology, runtime, budgets and each role's slice."""

    preset: Literal["apex", "gorila", "sync"] = "apex"
    """Topology: ``apex`` (one learner applies its own updates and publishes parameters),
    ``gorila`` (learners push gradients to the parameter server, applied asynchronously),
    ``sync`` (learners all-reduce gradients or average parameters with torch.distributed)."""
    runtime: Literal["serial", "local", "ray"] = "local"
    """``serial`` (one process, deterministic), ``local`` (processes on this machine) or
    ``ray`` (Ray actors on a private Ray instance or the cluster at ``ray.address``)."""
    seed: int = 0
    total_env_steps: int = 100_000
    checkpoint_period: int = 2_000
    """Updates between checkpoints (0: only at shutdown)."""
    colocate: bool = False
    """gorila/sync, local runtime: run actor i and learner i in one worker process (the
    classic parameter-server compute node). Needs actor.num_actors == learner.num_learners."""
    checkpoint_replay: bool = False
    """Include the replay contents in checkpoints (exact resume; large)."""
    keep_checkpoints: int = 2
    log_period: float = 1.0
    """Seconds between metrics rows (local runtime); the serial runtime logs every
    ``serial_log_steps`` env steps so its metrics are deterministic."""
    serial_log_steps: int = 1_000
    progress: bool = True
    """Live progress display on the terminal."""
    env: EnvConfig = field(default_factory=EnvConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    parameter_server: ParameterServerConfig = field(default_factory=ParameterServerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        validate(self)


PRESETS: dict[str, dict[str, Any]] = {
    # Ape-X (Horgan et al. 2018): N actors, central prioritized replay, one learner
    # that owns the optimizer and publishes parameters. Defaults tuned on CartPole-v1.
    "apex": {},
    # Gorila (Nair et al. 2015): several learners push gradients computed on the parameters
    # they last pulled; the parameter server applies them with its own optimizer.
    "gorila": {"learner": {"num_learners": 2, "batches_per_sample": 1}},
    # Synchronous data-parallel learners (all-reduce every step, or local SGD + averaging).
    "sync": {"learner": {"num_learners": 2, "sync_mode": "allreduce", "batches_per_sample": 1}},
}


# ----------------------------------------------------------------------------- validation


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


def validate(cfg: ExperimentConfig) -> None:
    """Check every value; raise :class:`ConfigError` on the first invalid one.

    Includes the rate limiter's deadlock check: the error buffer must let at
    least one of insert or sample proceed at any time.
    """
    _check_literals(cfg, "")
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
    _check(lr.batches_per_sample == 1 or cfg.preset == "apex", "learner.batches_per_sample",
           lr.batches_per_sample, f"1 with preset {cfg.preset} (several batches per sample is for apex)")
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
    if cfg.preset == "apex":
        _check(lr.num_learners == 1, "learner.num_learners", lr.num_learners,
               "1 with preset apex (use --preset gorila or sync for several learners)")
    if cfg.colocate:
        _check(cfg.preset in ("gorila", "sync"), "colocate", cfg.colocate,
               "false with preset apex (colocation pairs an actor with each gorila/sync learner)")
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
        _check(cfg.preset in ("apex", "gorila"), "preset", cfg.preset,
               "apex or gorila with runtime ray (sync learners on Ray are not built yet; use runtime local)")
        _check(not cfg.colocate, "colocate", cfg.colocate, "false with runtime ray")
        _check(r.placement == "central", "replay.placement", r.placement,
               "central with runtime ray (use ray.replay_shards to spread the replay)")
        _check(r.min_replay_size >= lr.batch_size * ry.replay_shards, "replay.min_replay_size", r.min_replay_size,
               f">= learner.batch_size x ray.replay_shards ({lr.batch_size * ry.replay_shards}): "
               "every shard must hold a batch")
    ev = cfg.eval
    _check(ev.eval_period >= 0, "eval.eval_period", ev.eval_period, "an integer >= 0")
    _check(ev.eval_episodes >= 1, "eval.eval_episodes", ev.eval_episodes, pos)
    _check(0.0 <= ev.epsilon <= 1.0, "eval.epsilon", ev.epsilon, "0 <= epsilon <= 1")


def sample_unit(cfg: ExperimentConfig) -> int:
    """Transitions sampled at once: ``batches_per_sample`` batches (apex), or one per learner
    for a synchronous round."""
    m = cfg.learner.num_learners if cfg.preset == "sync" else cfg.learner.batches_per_sample
    return cfg.learner.batch_size * m


def error_buffer(cfg: ExperimentConfig) -> float:
    """The rate limiter's error buffer, resolving the ``None`` default
    (4 x max(samples_per_insert, transitions per learning step))."""
    r = cfg.replay
    if r.error_buffer is not None:
        return float(r.error_buffer)
    return 4.0 * max(r.samples_per_insert, sample_unit(cfg))


# ----------------------------------------------------------------------------- building


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's type, raising ConfigError if impossible."""
    origin = get_origin(hint)
    args = get_args(hint)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(key, value, f"a mapping of {hint.__name__} fields")
        return _build(hint, value, key + ".")
    if origin is Literal:
        return value
    if origin in (tuple, list) or hint in (tuple, list):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, "a list")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, key) for v in value)
    if args and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(key, value, "true or false")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(key, value, "an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
        if isinstance(value, int):
            return value
        raise ConfigError(key, value, "an integer")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(key, value, "a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, value, "a number") from None
    if hint is str:
        return str(value)
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(prefix + k, v, "one of the keys " + ", ".join(sorted(names)))
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    if cls is ExperimentConfig:
        return cls(**kwargs)
    # Nested sections are validated as part of the whole experiment.
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from nested plain data.

    The preset named by ``data["preset"]`` (default ``apex``) supplies defaults
    that ``data`` overrides. Raises :class:`ConfigError`.
    """
    preset = data.get("preset", "apex")
    if preset not in PRESETS:
        raise ConfigError("preset", preset, "one of " + ", ".join(PRESETS))
    merged = _deep_merge(PRESETS[preset], data)
    return _build(ExperimentConfig, merged)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain YAML-able data (tuples become lists)."""

    def conv(v: Any) -> Any:
        if is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping. Raises :class:`ConfigError` if the file is missing or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("--config", str(p), "an existing YAML file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("--config", str(p), f"valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError("--config", str(p), "a YAML mapping of config keys")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML scalars/lists) to nested data."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", item, "key=value, e.g. replay.capacity=50000")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {}
                node[p] = child
            node = child
        node[parts[-1]] = value
    return out


def replace(cfg: ExperimentConfig, **changes: Any) -> ExperimentConfig:
    """A validated copy with dotted-key changes: ``replace(cfg, **{"replay.capacity": 10})``."""
    data = to_dict(cfg)
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return from_dict(data)


__all__ = [
    "ActorConfig",
    "ConfigError",
    "EnvConfig",
    "EvalConfig",
    "ExperimentConfig",
    "LearnerConfig",
    "NetworkConfig",
    "PRESETS",
    "RayConfig",
    "ReplayConfig",
    "apply_overrides",
    "error_buffer",
    "from_dict",
    "load_yaml",
    "replace",
    "to_dict",
    "validate",
]
