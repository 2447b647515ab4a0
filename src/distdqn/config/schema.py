"""The experiment's schema: one frozen dataclass per role, composed into
:class:`ExperimentConfig`.

Building an :class:`ExperimentConfig` validates it (:func:`distdqn.config.validate.validate`):
every invalid value raises :class:`ConfigError` naming the dotted key, the value and what is
allowed, before any process starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from distdqn.config.validate import validate


@dataclass(frozen=True)
class EnvConfig:
    """Which environment, how many copies per actor, and Atari preprocessing."""

    id: str = "CartPole-v1"
    """Which environment: a registered Gymnasium id (``ALE/...`` ids get the standard Atari
    preprocessing below); Gymnasium's ``module:id`` (the module is imported first); or an
    entry point ``package.module:callable`` (or ``path/to/file.py:callable``), a class or
    factory returning a Gymnasium env. Observation spaces that are not a Box are flattened
    (``gymnasium.spaces.flatten``); the dqn agent needs a Discrete action space."""
    imports: tuple[str, ...] = ()
    """Modules imported in every process before the env is made (packages that register
    their envs when imported), as RL-Zoo's ``--gym-packages``."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Passed to the env's constructor or to ``gymnasium.make`` (``--set env.kwargs.NAME=VALUE``)."""
    channels_last: Literal["auto", "true", "false"] = "auto"
    """Image observations (3-D) stored height, width, channels: transposed to channels
    first for the networks. ``auto``: when the last axis is smaller than the other two."""
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
    """Q-network architecture (see :mod:`distdqn.agents.dqn.networks`)."""

    kind: Literal["auto", "mlp", "nature_cnn", "small_cnn"] = "auto"
    """``auto``: the Nature CNN for image observations (3-D) at least 36x36 (Atari's 84x84),
    the small CNN (3x3 convolutions, stride 1) for smaller grids, the MLP otherwise."""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """MLP hidden layer widths."""
    dueling: bool | None = None
    """Dueling head, Q = V + A - mean(A) (Wang et al. 2016, eq. 9). None (default): on for
    the Nature CNN (as in Ape-X on Atari), off for the MLP and the small CNN (on CartPole it
    solves in as many env steps and its updates are cheaper; figures in benchmarks/README.md)."""


@dataclass(frozen=True)
class ReplayConfig:
    """Experience replay and its rate limiter (see :mod:`distdqn.replay`)."""

    kind: Literal["prioritized", "uniform", "fifo"] = "prioritized"
    """``fifo``: a queue, each item read once, oldest first (IMPALA's unrolls)."""
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
    chunk costs a fixed overhead in both processes (a pipe write and read, thread
    wake-ups), which larger chunks spread; larger still add parameter lag (figures in
    benchmarks/README.md)."""
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
    """Adam/RMSProp step size. The default is tuned on CartPole-v1 (serial-runtime sweeps
    over seeds, in benchmarks/README.md); Atari wants far less (configs/pong.yaml: 6.25e-5)."""
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
    """``auto``: CUDA when available for the Nature CNN; an MLP learner stays on the CPU,
    where its update is faster: a small MLP's update on a GPU is bound by per-kernel launch
    cost (figures in benchmarks/README.md)."""
    torch_threads: int = 1
    """Intra-op threads of the learner process (small networks are fastest on 1)."""
    mixed_precision: bool = False
    """bf16 autocast for the learner's forward passes (loss and optimizer stay float32)."""
    flush_denormal: bool = True
    """CPU learner: denormal floats read and written as zero in its process
    (``torch.set_flush_denormal``). Adam's first moment of a unit whose gradient stays zero
    (a dead ReLU) decays through the denormal range, where x86 arithmetic is many times
    slower."""
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
class R2D2Config:
    """The R2D2 agent (Kapturowski et al. 2019; ``distdqn.agents.r2d2``). Defaults are the
    paper's Atari settings; ``configs/cartpole-masked-r2d2.yaml`` has small-task ones."""

    sequence_length: int = 80
    """Trained steps per stored sequence (after the burn-in)."""
    sequence_period: int = 40
    """Steps between the starts of consecutive sequences (80 and 40: they overlap by 40)."""
    burn_in: int = 40
    """Steps at a sequence's start that only warm the LSTM up from the stored state (no
    gradient, for the online and the target network)."""
    lstm_size: int = 512
    """The LSTM's hidden width."""
    priority_eta: float = 0.9
    """Sequence priority eta max|delta| + (1 - eta) mean|delta|."""
    rescale_eps: float = 1e-3
    """epsilon of the value rescaling h(x) = sign(x)(sqrt(|x|+1) - 1) + eps x."""


@dataclass(frozen=True)
class InferenceConfig:
    """SEED RL's central inference server (topology ``seed``; Espeholt et al. 2020).

    Env workers are the ``actor.num_actors`` actors with ``env.envs_per_actor`` envs each;
    the server batches their requests dynamically (as Sample Factory and TorchRL do)."""

    max_batch: int | None = None
    """Observations at which a forward pass runs at once (a pass never takes more). None:
    one half of every worker (``num_actors x envs_per_actor / splits``), so that a pass
    does not wait for halves that are stepping (:func:`distdqn.config.inference_batch`)."""
    max_wait_ms: float = 1.0
    """Longest wait of the oldest waiting request before a smaller batch runs, in ms."""
    splits: int = 2
    """Env groups per worker, stepped alternately (double buffering: one steps while the
    other waits for its actions; Sample Factory's ``worker_num_splits``). 1 or 2."""


@dataclass(frozen=True)
class ActorCriticConfig:
    """The actor-critic agent (IMPALA, Espeholt et al. 2018; ``distdqn.agents.actor_critic``)."""

    unroll_length: int = 20
    """Steps per unroll (IMPALA's n)."""
    rho_bar: float = 1.0
    """V-trace: truncation of the importance weights in the temporal differences (rho-bar)."""
    c_bar: float = 1.0
    """V-trace: truncation of the trace coefficients c_i (c-bar)."""
    rho_bar_pg: float = 1.0
    """V-trace: truncation of the importance weight of the policy-gradient advantage."""
    value_coef: float = 0.5
    """Weight of the value (baseline) loss."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus."""


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: topology, runtime, budgets and each role's slice."""

    preset: Literal["apex", "gorila", "sync", "seed", "r2d2", "impala", "a3c"] = "apex"
    """A tested combination of agent and topology (:data:`PRESETS`); ``agent`` and
    ``topology`` override it."""
    agent: Literal["dqn", "r2d2", "actor_critic"] = "dqn"
    """What is learned and how (``distdqn.agents``): ``dqn`` (double, dueling, n-step, PER),
    ``r2d2`` (recurrent DQN on sequences with stored state and burn-in), ``actor_critic``
    (policy and value, V-trace)."""
    topology: Literal["apex", "gorila", "sync", "seed", "impala", "a3c"] = "apex"
    """Which roles exist and how data flows (``distdqn.topologies``): ``apex`` (one learner
    applies its own updates and publishes parameters), ``gorila`` (learners push gradients to
    the parameter server, applied asynchronously), ``sync`` (learners all-reduce gradients or
    average parameters with torch.distributed), ``seed`` (env workers only step envs; one
    inference server batches every worker's observations into one forward pass and builds the
    items, learned from as apex does), ``impala`` (actors send unrolls through a FIFO
    to one learner that corrects their policy lag with V-trace and publishes parameters),
    ``a3c`` (workers, each an actor and a learner, push actor-critic gradients of their own
    rollouts to the parameter server)."""
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
    actor_critic: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    r2d2: R2D2Config = field(default_factory=R2D2Config)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        validate(self)
