"""``distdqn bench``: throughput and time-to-solve, each figure next to a ceiling measured
in the same run.

Rows (see ``benchmarks/README.md`` for the reasoning behind each ceiling):

(a) Collection: env steps/s of the local runtime with the learner idle
    (``run_local(..., collect_only=True)``), steady state read from ``metrics.csv`` after
    warm-up, against N bare processes each stepping the same vector env with a batched
    forward pass of the same network, run the way the actors run it (a TorchScript trace
    unless ``actor.trace_network`` is off). Target ratio >= 0.8.
(b) Learning: updates/s of the learner's own step (replay sample -> learn -> priority
    update -> parameter publication) on a full replay, against a bare PyTorch loop doing
    the same double-DQN update on in-memory random batches. Target ratio >= 0.8.
(c) The full training run of the default config: summary and steady-state sps/ups.
(d) Time-to-solve CartPole-v1 (eval mean return >= 475 over 20 greedy episodes, every
    2,500 env steps) per seed, against Stable-Baselines3 DQN with the RL-Zoo
    hyperparameters measured the same way. Target: median wall-clock ratio <= 0.25.

These are the *classic* rows, the default for classic-control ids on the Gymnasium
backend. Atari ids and ``--env-backend envpool`` (or ``--rows env``) get the *env* rows of
:mod:`distdqn.bench_env` instead: raw env, collection, bare update, learner, replay
throughput and replay memory (plus time-to-solve for CartPole-v1).

Exit codes: 0 the benchmark ran (targets met or not: see the table); 1 a run failed;
2 invalid config or unknown environment.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distdqn.config import ConfigError, ExperimentConfig, apply_overrides, from_dict, load_yaml, replace
from distdqn.core import NonFiniteLossError, TransitionChunk
from distdqn.envs import EnvSpaces, EnvSpecError, is_atari, make_vector_env
from distdqn.exploration import apex_epsilons
from distdqn.losses import n_step_double_dqn_targets, td_loss
from distdqn.networks import trace_for_inference
from distdqn.program import build_network, frame_dedup_enabled, learner_device, spaces_for
from distdqn.roles.learner import make_optimizer
from distdqn.runtime.processes import start_process_server

DEFAULT_SECONDS = 10.0
QUICK_SECONDS = 3.0
"""Measurement window per row: default, and with ``--quick`` (which also skips time-to-solve)."""
REPLAY_CAPACITY = 1_000_000
"""Env mode, rows (e) and (f): replay capacity (``--replay-capacity``)."""

COLLECTION_TARGET = 0.8
LEARNING_TARGET = 0.8
SOLVE_WALL_TARGET = 0.25

SOLVE_ENV = "CartPole-v1"
SOLVE_BUDGET = 100_000
SOLVE_EVAL_PERIOD = 2_500
SOLVE_EVAL_EPISODES = 20
SOLVE_TARGET_RETURN = 475.0

SB3_ZOO_CARTPOLE: dict[str, Any] = {
    # rl-baselines3-zoo, hyperparams/dqn.yml, CartPole-v1 ("Almost Tuned").
    "n_timesteps": 50_000,
    "policy": "MlpPolicy",
    "learning_rate": 2.3e-3,
    "batch_size": 64,
    "buffer_size": 100_000,
    "learning_starts": 1_000,
    "gamma": 0.99,
    "target_update_interval": 10,
    "train_freq": 256,
    "gradient_steps": 128,
    "exploration_fraction": 0.16,
    "exploration_final_eps": 0.04,
    "policy_kwargs": {"net_arch": [256, 256]},
}
"""The RL-Zoo entry, verbatim. ``exploration_fraction`` is relative to ``n_timesteps``;
:func:`sb3_time_to_solve` rescales it so epsilon decays over the same 8,000 env steps
under the larger benchmark budget."""

LEARNING_ROUNDS = 3
"""(b) alternates the two loops this many times, so slow drifts in machine load hit both."""
COLLECTION_ROUNDS = 3
"""(a) takes this many collection runs, each between two ceiling measurements, for the
same reason: this machine's speed swung by up to 1.5x between a ceiling taken before one
long run and one taken after it."""
FILL_LIMIT = 100_000
"""(b) fills the replay with min(capacity, this) random transitions."""


class BenchError(RuntimeError):
    """A measurement could not be taken (e.g. a ceiling process died)."""


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- table rows


@dataclass
class Row:
    """One line of the result table.

    Attributes:
        label: what is measured.
        value: the figure (None: not measured).
        ceiling: the reference it is compared with (None: none).
        reference: what the ceiling is.
        target: the target on ``value / ceiling`` as ``(">=" | "<=", bound)``, or None.
        fmt: format spec of ``value`` and ``ceiling``.
    """

    label: str
    value: float | None
    ceiling: float | None = None
    reference: str = ""
    target: tuple[str, float] | None = None
    fmt: str = ",.0f"

    @property
    def ratio(self) -> float | None:
        """``value / ceiling``; an infinite value (not solved) gives inf, an infinite
        ceiling 0, both nan; None when either is missing."""
        v, c = self.value, self.ceiling
        if v is None or c is None:
            return None
        if math.isinf(v) or math.isinf(c):
            return math.nan if math.isinf(v) and math.isinf(c) else (math.inf if math.isinf(v) else 0.0)
        return v / c if c else math.inf

    @property
    def met(self) -> bool | None:
        """Whether the ratio meets the target (None: no target or no ratio)."""
        r = self.ratio
        if self.target is None or r is None or math.isnan(r):
            return None
        op, bound = self.target
        return r >= bound if op == ">=" else r <= bound


def _num(v: float | None, fmt: str) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "not solved"
    return format(v, fmt)


def render(rows: list[Row], notes: list[str]) -> None:
    """Print the rows as a rich table, then the notes."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    table = Table(title="distdqn bench", show_lines=False)
    table.add_column("row")
    table.add_column("figure", justify="right")
    table.add_column("ceiling / reference (same run)", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target", justify="right")
    table.add_column("", justify="center")
    for r in rows:
        ceiling = _num(r.ceiling, r.fmt)
        if r.reference:
            ceiling = f"{ceiling} {r.reference}" if r.ceiling is not None else r.reference
        ratio = r.ratio
        ratio_txt = "-" if ratio is None else ("n/a" if math.isnan(ratio) else f"{ratio:.2f}")
        target = "-" if r.target is None else f"{r.target[0]} {r.target[1]:.2f}"
        met = r.met
        status = "" if met is None else ("[green]ok[/green]" if met else "[red]MISS[/red]")
        table.add_row(r.label, _num(r.value, r.fmt), ceiling, ratio_txt, target, status)
    console.print(table)
    for n in notes:
        console.print(f"- {n}", highlight=False)


# ----------------------------------------------------------------------------- helpers


def _random_transitions(spaces: EnvSpaces, n: int, rng: np.random.Generator, discount: float) -> dict[str, np.ndarray]:
    """``n`` random transitions shaped like the env's (obs, action, n-step reward,
    discount with ~10% terminal zeros, next_obs, actor priority), as numpy arrays."""

    def obs() -> np.ndarray:
        if np.issubdtype(spaces.obs_dtype, np.integer):
            return rng.integers(0, 256, size=(n, *spaces.obs_shape)).astype(spaces.obs_dtype)
        return rng.standard_normal((n, *spaces.obs_shape)).astype(spaces.obs_dtype)

    return {
        "obs": obs(),
        "action": rng.integers(0, spaces.num_actions, size=n).astype(np.int64),
        "reward": rng.uniform(0.0, 3.0, size=n).astype(np.float32),
        "discount": np.where(rng.random(n) < 0.1, 0.0, discount).astype(np.float32),
        "next_obs": obs(),
        "priority": rng.exponential(1.0, size=n).astype(np.float32),
    }


def _timed(fn: Callable[[], Any], seconds: float, sync: Callable[[], None] | None = None) -> tuple[int, float]:
    """Call ``fn`` repeatedly for about ``seconds``; returns (calls, elapsed seconds)."""
    calls = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        fn()
        calls += 1
        if time.perf_counter() >= deadline:
            break
    if sync is not None:
        sync()
    return calls, time.perf_counter() - t0


@dataclass
class SteadyState:
    """Rates over a window of ``metrics.csv`` rows that excludes start-up and shutdown."""

    sps: float
    ups: float
    window_s: float
    env_steps: int
    rows: int


def steady_state(run_dir: Path, warm_env_steps: int = 0) -> SteadyState | None:
    """Env steps/s and updates/s between two logged rows of ``run_dir/metrics.csv``.

    The window starts at the first row at least one log period after the first row with
    env steps (actor spawn and imports are before it) that also has ``>= warm_env_steps``,
    and ends at the last row logged before the final env-step count was reached (the
    rows after it include shutdown, the final checkpoint and evaluation).
    None when fewer than two rows qualify.
    """
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [(int(r["env_steps"]), int(r["updates"]), float(r["wall_time"])) for r in csv.DictReader(f)]
    final = max((s for s, _, _ in rows), default=0)
    first = next((i for i, (s, _, _) in enumerate(rows) if s > 0), None)
    if first is None:
        return None
    window = [r for r in rows[first + 1 :] if warm_env_steps <= r[0] < final]
    if len(window) < 2:
        return None
    (s0, u0, t0), (s1, u1, t1) = window[0], window[-1]
    dt = max(t1 - t0, 1e-9)
    return SteadyState(sps=(s1 - s0) / dt, ups=(u1 - u0) / dt, window_s=dt, env_steps=s1 - s0, rows=len(window))


def _base_config(env_id: str, actors: int) -> ExperimentConfig:
    """The default (apex) config with the benchmark's env and actor count, no progress bar."""
    return from_dict({"env": {"id": env_id}, "actor": {"num_actors": actors}, "progress": False})


# ----------------------------------------------------------------------------- (a) collection


def _steady_epsilons(cfg: ExperimentConfig, actor_id: int) -> np.ndarray:
    """Per-sub-env epsilon an actor uses once its schedule has settled (end of the linear
    decay, or its fixed Ape-X slice)."""
    e = cfg.env.envs_per_actor
    if cfg.actor.epsilon_schedule == "apex":
        eps = apex_epsilons(cfg.actor.num_actors * e, cfg.actor.apex_epsilon, cfg.actor.apex_alpha)
        return eps[actor_id * e : (actor_id + 1) * e]
    return np.full(e, cfg.actor.epsilon_end)


def bare_collector(
    cfg: ExperimentConfig, spaces: EnvSpaces, actor_id: int, seconds: float, barrier: Any, out: Any
) -> None:
    """Body of one ceiling process for (a): the vector env and a batched forward pass,
    epsilon-greedy actions, finished sub-envs reset in place; nothing else.

    Puts ``(actor_id, env_steps, elapsed_s)`` on ``out`` after ``seconds`` of stepping that
    starts, for all processes together, at ``barrier``.
    """
    torch.set_num_threads(1)
    envs = make_vector_env(cfg.env, cfg.env.envs_per_actor)
    net = build_network(cfg, spaces)
    net.eval()
    n = envs.num_envs
    rng = np.random.default_rng([cfg.seed, actor_id])
    eps = _steady_epsilons(cfg, actor_id)
    obs, _ = envs.reset(seed=[int(s) for s in rng.integers(2**31 - 1, size=n)])
    obs = np.asarray(obs)
    if cfg.actor.trace_network:  # the forward pass the actors use
        net = trace_for_inference(net, torch.from_numpy(obs))

    def step() -> None:
        nonlocal obs
        with torch.inference_mode():
            greedy = net(torch.from_numpy(obs)).argmax(dim=1).numpy()
        actions = np.where(rng.random(n) < eps, rng.integers(spaces.num_actions, size=n), greedy)
        next_obs, _, terminated, truncated, _ = envs.step(actions)
        next_obs = np.asarray(next_obs)
        done = np.logical_or(terminated, truncated)
        if done.any():
            reset_obs, _ = envs.reset(options={"reset_mask": done})
            next_obs = np.where(done.reshape(-1, *([1] * (next_obs.ndim - 1))), np.asarray(reset_obs), next_obs)
        obs = next_obs

    for _ in range(200):  # warm-up
        step()
    barrier.wait(timeout=300)
    steps, elapsed = _timed(step, seconds)
    envs.close()
    out.put((actor_id, steps * n, elapsed))


def measure_collection_ceiling(cfg: ExperimentConfig, spaces: EnvSpaces, seconds: float,
                               target: Callable[..., None] = bare_collector) -> dict[str, Any]:
    """(a) ceiling: ``num_actors`` concurrent ``target`` processes (default
    :func:`bare_collector`; same signature), started together; rates summed."""
    ctx = mp.get_context("spawn")
    k = cfg.actor.num_actors
    barrier, out = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=target, args=(cfg, spaces, i, seconds, barrier, out), daemon=True)
             for i in range(k)]
    for p in procs:
        p.start()
    results: list[tuple[int, int, float]] = []
    deadline = time.perf_counter() + seconds + 300
    while len(results) < k:
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed or time.perf_counter() > deadline:
                for p in procs:
                    p.kill()
                raise BenchError(f"collection ceiling process failed (exit codes {failed or 'timeout'})") from None
    for p in procs:
        p.join(timeout=30)
    per_process = [steps / elapsed for _, steps, elapsed in sorted(results)]
    return {"sps": float(sum(per_process)), "per_process_sps": per_process, "seconds": seconds}


def measure_collection(
    cfg: ExperimentConfig, spaces: EnvSpaces, seconds: float, expected_sps: float, run_dir: Path,
    warm_env_steps: int | None = None,
) -> dict[str, Any]:
    """(a) figure: ``run_local(collect_only=True)``, steady state from ``metrics.csv``.

    The warm-up lasts until the linear epsilon decay is over (so episodes look like the
    ceiling's; ``warm_env_steps`` overrides that) and at least one log period past the
    first collected env steps; the budget is sized from ``expected_sps`` (the ceiling) so
    the measured window lasts at least ``seconds`` (longer by the inverse of the ratio).
    """
    from distdqn.runtime.local import run_local

    warm = cfg.actor.epsilon_decay_steps if cfg.actor.epsilon_schedule == "linear" else 0
    if warm_env_steps is not None:
        warm = int(warm_env_steps)
    budget = int(warm + max(expected_sps, 1000.0) * (seconds + 1.0))
    c = replace(cfg, **{"replay.samples_per_insert": 0.0, "eval.eval_period": 0, "eval.target_return": None,
                        "total_env_steps": budget, "log_period": 0.5, "checkpoint_period": 0})
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = run_local(c, spaces, run_dir, collect_only=True)
    steady = steady_state(run_dir, warm)
    return {
        "sps": steady.sps if steady else summary["sps"],
        "steady_state": asdict(steady) if steady else None,
        "summary_sps": summary["sps"],
        "total_env_steps": budget,
        "warm_env_steps": warm,
        "wall_time_s": summary["wall_time_s"],
    }


# ----------------------------------------------------------------------------- (b) learning


class BareUpdate:
    """(b) ceiling: one double-DQN update on in-memory random batches, nothing else.

    The same network (``build_network``), optimizer (``make_optimizer``), loss
    (:mod:`distdqn.losses`), gradient clipping and target-copy period as the learner;
    no replay, no host<->numpy conversions, no priorities, no publication. Written as a
    plain PyTorch loop: the optimizer, the clipping and the target copy go tensor by
    tensor (the learner keeps its parameters in one flat buffer instead, which can put
    the (b) ratio above 1 for small networks).
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, device: torch.device, num_batches: int = 8):
        self.cfg = cfg.learner
        self.device = device
        self.online: nn.Module = build_network(cfg, spaces).to(device)
        self.target: nn.Module = copy.deepcopy(self.online).requires_grad_(False)
        self.optimizer = make_optimizer(self.cfg, self.online.parameters())
        rng = np.random.default_rng([cfg.seed, 11])
        gamma_n = cfg.learner.gamma ** cfg.actor.n_step
        self.batches = []
        for _ in range(num_batches):
            d = _random_transitions(spaces, self.cfg.batch_size, rng, gamma_n)
            d["weights"] = rng.uniform(0.3, 1.0, size=self.cfg.batch_size).astype(np.float32)
            d.pop("priority")
            self.batches.append({k: torch.from_numpy(v).to(device) for k, v in d.items()})
        self.updates = 0

    def __call__(self) -> None:
        b = self.batches[self.updates % len(self.batches)]
        q = self.online(b["obs"])
        with torch.no_grad():
            q_next_online = self.online(b["next_obs"]) if self.cfg.double_dqn else None
            q_next_target = self.target(b["next_obs"])
        y = n_step_double_dqn_targets(b["reward"], b["discount"],
                                      q_next_target if q_next_online is None else q_next_online,
                                      q_next_target, double_dqn=self.cfg.double_dqn)
        loss, _ = td_loss(q, b["action"], y, b["weights"], self.cfg.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.online.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        if self.cfg.tau is None and self.updates % self.cfg.target_update_period == 0:
            self.target.load_state_dict(self.online.state_dict())

    def sync(self) -> None:
        """Wait for queued device work (CUDA); a no-op on CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def measure_learning(cfg: ExperimentConfig, spaces: EnvSpaces, seconds: float, run_dir: Path) -> dict[str, Any]:
    """(b) figure and ceiling, in this process, alternating in :data:`LEARNING_ROUNDS` rounds.

    Figure: updates per second of :meth:`Coordinator.learn_step` (sample
    ``learner.batches_per_sample`` batches -> learn on each -> update_priorities, and
    ``ps.set_params`` every ``publish_period`` updates) plus the local runtime's write of
    each published vector to shared memory, on a replay filled with random transitions,
    ``samples_per_insert=0`` so the rate limiter never blocks. Ceiling: :class:`BareUpdate`.
    Both with ``learner.torch_threads`` intra-op threads.
    """
    from distdqn.runtime.common import Coordinator
    from distdqn.runtime.local import SharedParams

    c = replace(cfg, **{"replay.samples_per_insert": 0.0, "eval.eval_period": 0, "eval.target_return": None,
                        "checkpoint_period": 0})
    run_dir.mkdir(parents=True, exist_ok=True)
    co = Coordinator(c, spaces, run_dir, deterministic=False, resume=False)  # sets torch threads
    try:
        rng = np.random.default_rng([cfg.seed, 12])
        fill = min(c.replay.capacity, FILL_LIMIT)
        gamma_n = c.learner.gamma ** c.actor.n_step
        if frame_dedup_enabled(c, spaces):
            # Compact frame chunks as actors send them (random stacks would store 2k frames each).
            from distdqn.bench_replay import SyntheticActor
            from distdqn.bench_replay import fill as fill_replay

            pool = rng.integers(0, 256, size=(256, *spaces.obs_shape[1:]), dtype=np.uint8)
            sources = [SyntheticActor(i, c.env.envs_per_actor, c.actor.n_step, 800, c.actor.chunk_size,
                                      np.random.default_rng([cfg.seed, 12, i]), pool, spaces.num_actions, gamma_n)
                       for i in range(c.actor.num_actors)]
            fill_replay(co.replay, sources, fill)
        else:
            for i, start in enumerate(range(0, fill, 10_000)):
                d = _random_transitions(spaces, min(10_000, fill - start), rng, gamma_n)
                co.replay.insert(TransitionChunk(**d, actor_id=i % c.actor.num_actors))
        shared = SharedParams(mp.get_context("spawn"), co.ps.num_params)

        def learner_step() -> None:
            if co.learn_step():
                shared.write(co.ps.version, co.ps.get_params()[1])

        def learner_updates(seconds: float) -> tuple[int, float]:
            # A learn step takes learner.batches_per_sample updates: count updates, not calls.
            before = co.updates
            _, t = _timed(learner_step, seconds)
            return co.updates - before, t

        device = learner_device(c, spaces)
        bare = BareUpdate(c, spaces, device)
        for _ in range(20):  # warm-up (allocator, autograd graph caches)
            learner_step()
            bare()
        n_l = n_b = 0
        t_l = t_b = 0.0
        for _ in range(LEARNING_ROUNDS):
            k, t = _timed(bare, seconds / LEARNING_ROUNDS, bare.sync)
            n_b, t_b = n_b + k, t_b + t
            k, t = learner_updates(seconds / LEARNING_ROUNDS)
            n_l, t_l = n_l + k, t_l + t
    finally:
        co.metrics.close()
        co.evaluator.close()
    return {"ups": n_l / t_l, "ceiling_ups": n_b / t_b, "replay_size": len(co.replay),
            "batch_size": c.learner.batch_size, "torch_threads": c.learner.torch_threads,
            "device": str(device), "publish_period": c.learner.publish_period}


# ----------------------------------------------------------------------------- (c) full run


def measure_full_run(cfg: ExperimentConfig, spaces: EnvSpaces, budget: int, run_dir: Path) -> dict[str, Any]:
    """(c): a normal ``run_local`` of ``cfg`` (periodic evaluation included) for
    ``total_env_steps=budget``; ``eval.target_return`` is cleared so that reaching it
    does not end the measurement early."""
    from distdqn.runtime.local import run_local

    run_dir.mkdir(parents=True, exist_ok=True)
    summary = run_local(replace(cfg, **{"total_env_steps": budget, "eval.target_return": None}), spaces, run_dir)
    steady = steady_state(run_dir)
    return {"sps": summary["sps"], "ups": summary["ups"], "wall_time_s": summary["wall_time_s"],
            "env_steps": summary["env_steps"], "updates": summary["updates"],
            "stop_reason": summary["stop_reason"], "steady_state": asdict(steady) if steady else None}


# ----------------------------------------------------------------------------- (d) time to solve


def distdqn_time_to_solve(actors: int, seed: int, run_dir: Path, backend: str = "gymnasium") -> dict[str, Any]:
    """(d), distdqn: the default config on CartPole-v1 (``env.backend=backend``), stopped at
    the first evaluation whose mean return reaches the target. Wall time is from the call
    of ``run_local``."""
    from distdqn.runtime.local import run_local

    cfg = from_dict({
        "env": {"id": SOLVE_ENV, "backend": backend}, "actor": {"num_actors": actors}, "seed": seed, "progress": False,
        "total_env_steps": SOLVE_BUDGET,
        "eval": {"eval_period": SOLVE_EVAL_PERIOD, "eval_episodes": SOLVE_EVAL_EPISODES,
                 "target_return": SOLVE_TARGET_RETURN},
    })
    spaces = spaces_for(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    s = run_local(cfg, spaces, run_dir)
    total = time.perf_counter() - t0
    # The summary's clock starts once the learner, replay and evaluator are built; add
    # that set-up so the figure runs from the call, like SB3's from model construction.
    setup = max(total - s["wall_time_s"], 0.0)
    solved = s["solved_at_wall_time_s"]
    return {"seed": seed, "solved": bool(s["solved"]), "solved_at_env_steps": s["solved_at_env_steps"],
            "solved_at_wall_time_s": None if solved is None else solved + setup, "setup_s": setup,
            "final_eval_return": s["final_eval_return"], "env_steps": s["env_steps"], "wall_time_s": total}


def sb3_time_to_solve(seed: int, torch_threads: int | None = None) -> dict[str, Any]:
    """(d), Stable-Baselines3 DQN with :data:`SB3_ZOO_CARTPOLE` on CartPole-v1, measured like
    distdqn: every :data:`SOLVE_EVAL_PERIOD` env steps, :data:`SOLVE_EVAL_EPISODES` greedy
    (``deterministic=True``) episodes run in parallel on a separate vector env; stops at the
    first mean return >= :data:`SOLVE_TARGET_RETURN` or after :data:`SOLVE_BUDGET` steps.
    Wall time is from before the envs and the model are built. Runs with ``torch_threads``
    intra-op threads, or torch's default when None (call it in a fresh process)."""
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    class SolveCallback(BaseCallback):
        """Evaluates every ``SOLVE_EVAL_PERIOD`` steps; stops training once solved."""

        def __init__(self, eval_env: Any, t0: float):
            super().__init__()
            self.eval_env, self.t0 = eval_env, t0
            self.next_eval = SOLVE_EVAL_PERIOD
            self.solved_at: tuple[int, float] | None = None
            self.last_return = math.nan

        def _on_step(self) -> bool:
            if self.num_timesteps < self.next_eval:
                return True
            while self.next_eval <= self.num_timesteps:
                self.next_eval += SOLVE_EVAL_PERIOD
            mean, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=SOLVE_EVAL_EPISODES,
                                      deterministic=True)
            self.last_return = float(mean)
            if mean >= SOLVE_TARGET_RETURN:
                self.solved_at = (self.num_timesteps, time.perf_counter() - self.t0)
                return False
            return True

    zoo = SB3_ZOO_CARTPOLE
    hp = {k: v for k, v in zoo.items() if k not in ("n_timesteps", "policy")}
    # Same absolute epsilon decay (0.16 x 50k = 8k steps) under the larger budget.
    hp["exploration_fraction"] = zoo["exploration_fraction"] * zoo["n_timesteps"] / SOLVE_BUDGET
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    env = make_vec_env(SOLVE_ENV, n_envs=1, seed=seed)
    eval_env = make_vec_env(SOLVE_ENV, n_envs=SOLVE_EVAL_EPISODES, seed=seed + 10_000)
    model = DQN(zoo["policy"], env, seed=seed, verbose=0, **hp)
    cb = SolveCallback(eval_env, t0)
    model.learn(total_timesteps=SOLVE_BUDGET, callback=cb)
    total = time.perf_counter() - t0
    env.close()
    eval_env.close()
    return {"seed": seed, "solved": cb.solved_at is not None,
            "solved_at_env_steps": cb.solved_at[0] if cb.solved_at else None,
            "solved_at_wall_time_s": cb.solved_at[1] if cb.solved_at else None,
            "final_eval_return": cb.last_return, "env_steps": int(model.num_timesteps), "wall_time_s": total,
            "torch_threads": threads, "device": str(model.device), "hyperparameters": hp}


def _or_inf(v: float | None) -> float:
    """A time-to-solve figure; None (not solved within the budget) becomes +inf."""
    return math.inf if v is None else float(v)


def _median_time(results: list[dict[str, Any]], key: str) -> float:
    """Median of ``key`` over runs, an unsolved run counting as +inf."""
    return float(statistics.median(_or_inf(r[key]) for r in results))


# ----------------------------------------------------------------------------- main


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError("--seeds", text, "comma-separated integers >= 0, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0:
        raise ConfigError("--seeds", text, "comma-separated integers >= 0, e.g. 0,1,2")
    return seeds


def _bench_config(args: argparse.Namespace) -> ExperimentConfig:
    """The default (apex) config, then ``--config``, then ``--env``, ``--env-backend``,
    ``--actors`` and ``--set``; no progress bar. Raises ConfigError."""
    data: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    flags = ["progress=false"]
    for attr, key in (("env", "env.id"), ("env_backend", "env.backend"), ("actors", "actor.num_actors")):
        if getattr(args, attr, None) is not None:
            flags.append(f"{key}={getattr(args, attr)}")
    return from_dict(apply_overrides(data, flags + list(getattr(args, "set", None) or [])))


def bench_mode(cfg: ExperimentConfig, rows: str = "auto") -> str:
    """``classic`` (rows a-d of this module) or ``env`` (:mod:`distdqn.bench_env`); ``auto``:
    env for Atari ids and the envpool backend, classic otherwise."""
    if rows in ("classic", "env"):
        return rows
    return "env" if is_atari(cfg.env.id) or cfg.env.backend == "envpool" else "classic"


def main(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see ``distdqn bench --help``); print the
    table, optionally write ``--json``. Returns the exit code."""
    default_threads = torch.get_num_threads()
    quick = bool(getattr(args, "quick", False))
    seconds = args.seconds if args.seconds is not None else (QUICK_SECONDS if quick else DEFAULT_SECONDS)
    try:
        if seconds <= 0:
            raise ConfigError("--seconds", seconds, "a number > 0")
        cfg = _bench_config(args)
        mode = bench_mode(cfg, getattr(args, "rows", None) or "auto")
        solve = not args.skip_solve and not quick and (mode == "classic" or cfg.env.id == SOLVE_ENV)
        seeds = _parse_seeds(args.seeds) if solve else []
        capacity = int(getattr(args, "replay_capacity", None) or REPLAY_CAPACITY)
        if capacity < 10_000:
            raise ConfigError("--replay-capacity", capacity, "an integer >= 10000")
        spaces = spaces_for(cfg)
    except (ConfigError, EnvSpecError) as exc:
        print(f"distdqn: error: {exc}", file=sys.stderr)
        return 2
    # As `distdqn train` does once its config is valid: the local runtime's children are forks
    # of this server (distdqn.runtime.processes), which imports torch once, here.
    start_process_server()
    run_sb3 = bool(seeds) and not args.skip_sb3
    sb3_missing = run_sb3 and importlib.util.find_spec("stable_baselines3") is None
    run_sb3 = run_sb3 and not sb3_missing
    sb3_threads: int | None = getattr(args, "sb3_threads", None)
    report: dict[str, Any] = {
        "mode": mode, "env": cfg.env.id, "backend": cfg.env.backend, "actors": cfg.actor.num_actors,
        "envs_per_actor": cfg.env.envs_per_actor, "seconds": float(seconds),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_default_threads": default_threads,
                    "learner_device": str(learner_device(cfg, spaces))},
    }
    try:
        with tempfile.TemporaryDirectory(prefix="distdqn-bench-") as tmp:
            if mode == "env":
                from distdqn.bench_env import env_rows

                rows = env_rows(cfg, spaces, float(seconds), Path(tmp), report, capacity)
            else:
                rows = _throughput_rows(cfg, spaces, float(seconds), Path(tmp), report)
            if seeds:
                rows += _solve_rows(seeds, cfg.actor.num_actors, run_sb3, sb3_threads, Path(tmp), report,
                                    label="(d)" if mode == "classic" else "(g)", backend=cfg.env.backend)
    except (NonFiniteLossError, BenchError) as exc:
        print(f"distdqn: error: {exc}", file=sys.stderr)
        return 1
    if mode == "env":
        from distdqn.bench_env import env_notes

        notes = env_notes(cfg, spaces, report) + _solve_notes(cfg, report)
    else:
        notes = _notes(cfg, report)
    if sb3_missing:
        notes.append("Stable-Baselines3 is not installed: SB3 column skipped "
                     "(pip install stable-baselines3, or pip install -e '.[bench]').")
    render(rows, notes)
    if args.json:
        report["rows"] = [{"label": r.label, "value": r.value, "ceiling": r.ceiling, "ratio": r.ratio,
                           "target": None if r.target is None else f"{r.target[0]} {r.target[1]}", "met": r.met}
                          for r in rows]
        Path(args.json).write_text(json.dumps(_jsonable(report), indent=2) + "\n")
        _say(f"figures written to {args.json}")
    return 0


def measure_collection_rounds(cfg: ExperimentConfig, spaces: EnvSpaces, seconds: float, work: Path,
                              rounds: int = COLLECTION_ROUNDS) -> dict[str, Any]:
    """(a) in alternating rounds: ceiling, collection run, ceiling, ... (``rounds``
    collection runs of ``seconds / rounds`` each after warm-up, at least 2 s; ``rounds + 1``
    ceilings of half that). Each run is set against the mean of the ceilings on either side
    of it. Returns ``sps`` (mean of the runs), ``ceiling_sps`` (mean of the runs' ceilings),
    ``round_ratios`` and the measurements themselves (``runs``, ``ceilings``).
    """
    a, e = cfg.actor.num_actors, cfg.env.envs_per_actor
    window = max(seconds / rounds, 2.0)
    _say(f"(a) collection ceiling: {a} bare processes x {e} envs, {window / 2:.3g} s")
    ceilings = [measure_collection_ceiling(cfg, spaces, window / 2)]
    runs = []
    for r in range(rounds):
        _say(f"(a) collection, round {r + 1}/{rounds}: run_local(collect_only=True), >= {window:.3g} s after warm-up")
        runs.append(measure_collection(cfg, spaces, window, ceilings[-1]["sps"], work / f"collect{r}"))
        _say(f"(a) collection ceiling: {window / 2:.3g} s")
        ceilings.append(measure_collection_ceiling(cfg, spaces, window / 2))
    sides = [(ceilings[r]["sps"] + ceilings[r + 1]["sps"]) / 2 for r in range(rounds)]
    return {"sps": float(np.mean([x["sps"] for x in runs])), "ceiling_sps": float(np.mean(sides)),
            "round_ratios": [x["sps"] / c for x, c in zip(runs, sides)], "runs": runs, "ceilings": ceilings,
            "warm_env_steps": runs[0]["warm_env_steps"], "window_s": window}


def _throughput_rows(cfg: ExperimentConfig, spaces: EnvSpaces, seconds: float, work: Path,
                     report: dict[str, Any]) -> list[Row]:
    """Rows (a), (b), (c); their figures go into ``report``."""
    coll = measure_collection_rounds(cfg, spaces, seconds, work)
    report["collection"] = coll
    a, e = cfg.actor.num_actors, cfg.env.envs_per_actor
    ceiling_sps = coll["ceiling_sps"]
    rows = [Row(f"(a) collection: env steps/s, {a} actors x {e} envs, learner idle", coll["sps"], ceiling_sps,
                f"(bare env + forward, {a} procs)", (">=", COLLECTION_TARGET))]

    _say(f"(b) learning: learner step vs bare update loop, {seconds:g} s each")
    learn = measure_learning(cfg, spaces, seconds, work / "learn")
    report["learning"] = learn
    rows.append(Row(f"(b) learning: updates/s, batch {learn['batch_size']}, replay {learn['replay_size']:,}",
                    learn["ups"], learn["ceiling_ups"], "(bare torch update)", (">=", LEARNING_TARGET)))

    spi = cfg.replay.samples_per_insert
    est = coll["sps"] if spi <= 0 else min(coll["sps"], learn["ups"] * cfg.learner.batch_size / spi)
    budget = max(int(est * seconds), cfg.replay.min_replay_size * 2)
    _say(f"(c) full training run: run_local, {budget:,} env steps")
    full = measure_full_run(cfg, spaces, budget, work / "full")
    report["full_run"] = full
    rows.append(Row("(c) full run: env steps/s (summary, incl. start-up)", full["sps"], ceiling_sps, "(a ceiling)"))
    rows.append(Row("(c) full run: updates/s (summary, incl. start-up)", full["ups"], learn["ceiling_ups"],
                    "(b ceiling)"))
    if full["steady_state"]:
        ss = full["steady_state"]
        rows.append(Row("(c) full run: env steps/s (steady state)", ss["sps"], ceiling_sps, "(a ceiling)"))
        rows.append(Row("(c) full run: updates/s (steady state)", ss["ups"], learn["ceiling_ups"], "(b ceiling)"))
    return rows


def _notes(cfg: ExperimentConfig, report: dict[str, Any]) -> list[str]:
    """The lines printed under the table: machine, threads, and how each row was measured."""
    m = report["machine"]
    solve = report.get("solve", {})
    sb3_threads = ""
    if solve.get("sb3"):
        how = "torch default" if solve["sb3_threads_requested"] is None else "requested"
        sb3_threads = f", SB3 {solve['sb3_torch_threads']} ({how})"
    coll = report["collection"]
    windows = [r["steady_state"]["window_s"] for r in coll["runs"] if r["steady_state"]]
    how = (f"mean of {len(coll['runs'])} runs, each the steady state from metrics.csv (over "
           f"{', '.join(f'{w:.1f}' for w in windows)} s) after {coll['warm_env_steps']:,} warm-up env steps "
           "(epsilon decay)")
    if len(windows) < len(coll["runs"]):
        how += "; a run without a steady-state window counts its summary sps, start-up included"
    ceilings = ", ".join(f"{c['sps']:,.0f}" for c in coll["ceilings"])
    ratios = ", ".join(f"{r:.2f}" for r in coll["round_ratios"])
    notes = [
        f"machine: {m['cpus']} CPUs, torch {m['torch']}, learner device {m['learner_device']}; torch threads: "
        f"actors and (a) ceiling 1, learner and both (b) loops {cfg.learner.torch_threads} "
        f"(learner.torch_threads){sb3_threads}.",
        f"(a) figure: {how}; ceiling: the mean of the ceilings taken before and after each run "
        f"({ceilings}); per-run ratios {ratios}.",
        "(c) summary figures include actor spawn; steady state excludes it. Ratios to the (a)/(b) ceilings "
        "are for orientation (actors and learner share the CPU; samples_per_insert ties sps to ups).",
    ]
    return notes + _solve_notes(cfg, report)


def _solve_notes(cfg: ExperimentConfig, report: dict[str, Any]) -> list[str]:
    """Notes on the time-to-solve rows (none when they did not run)."""
    solve = report.get("solve", {})
    notes: list[str] = []
    lab = solve.get("label", "(d)")
    if solve:
        if solve.get("sb3"):
            hp = solve["sb3"][0]
            notes.append(f"{lab} SB3 {_sb3_version()} DQN, RL-Zoo CartPole-v1 hyperparameters, exploration_fraction "
                         f"{hp['hyperparameters']['exploration_fraction']:g} (the Zoo's 0.16 of 50k steps: the same "
                         f"8k-step decay within the {SOLVE_BUDGET:,}-step budget), device {hp['device']}.")
            if solve["sb3_torch_threads"] > 1:
                notes.append(f"{lab} SB3 ran with {solve['sb3_torch_threads']} torch threads: multi-threaded torch "
                             "slows down sharply when other processes load the CPU, so its times are load-sensitive.")
        notes.append(f"{lab} {SOLVE_ENV} (env.backend={solve.get('backend', 'gymnasium')}), "
                     f"{cfg.actor.num_actors} actors; solved = first eval (every "
                     f"{SOLVE_EVAL_PERIOD:,} env steps) with mean return >= {SOLVE_TARGET_RETURN:g} over "
                     f"{SOLVE_EVAL_EPISODES} greedy episodes; wall from the start of the run (distdqn: the call of "
                     "run_local, actor spawn included; SB3: env and model construction) to the end of that eval; "
                     f"not solved within {SOLVE_BUDGET:,} steps counts as +inf"
                     + ("; ratio = median distdqn / median SB3." if solve.get("sb3") else "."))
    return notes


def _solve_rows(seeds: list[int], actors: int, run_sb3: bool, sb3_threads: int | None, work: Path,
                report: dict[str, Any], label: str = "(d)", backend: str = "gymnasium") -> list[Row]:
    """Row (d) (``label``): distdqn (on ``backend``) and (optionally) SB3 per seed,
    interleaved; figures go into ``report``."""
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) if run_sb3 else None
    try:
        for seed in seeds:
            _say(f"{label} time to solve {SOLVE_ENV}, seed {seed}: distdqn ({backend})")
            ours.append(distdqn_time_to_solve(actors, seed, work / f"solve-s{seed}", backend))
            if pool is not None:
                _say(f"{label} time to solve {SOLVE_ENV}, seed {seed}: Stable-Baselines3 DQN")
                theirs.append(pool.submit(sb3_time_to_solve, seed, sb3_threads).result())
    finally:
        if pool is not None:
            pool.shutdown()
    rows: list[Row] = []
    ref = "(SB3)" if theirs else ""
    for i, r in enumerate(ours):
        s = theirs[i] if theirs else None
        rows.append(Row(f"{label} seed {r['seed']}: env steps to solve", _or_inf(r["solved_at_env_steps"]),
                        _or_inf(s["solved_at_env_steps"]) if s else None, ref))
        rows.append(Row(f"{label} seed {r['seed']}: wall s to solve", _or_inf(r["solved_at_wall_time_s"]),
                        _or_inf(s["solved_at_wall_time_s"]) if s else None, ref, fmt=".1f"))
    med = _median_time(ours, "solved_at_wall_time_s")
    med_sb3 = _median_time(theirs, "solved_at_wall_time_s") if theirs else None
    median_row = Row(f"{label} median wall s to solve, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}", med, med_sb3, ref,
                     ("<=", SOLVE_WALL_TARGET) if theirs else None, fmt=".1f")
    rows.append(median_row)
    report["solve"] = {"env": SOLVE_ENV, "backend": backend, "label": label, "budget": SOLVE_BUDGET, "eval_period": SOLVE_EVAL_PERIOD,
                       "eval_episodes": SOLVE_EVAL_EPISODES, "target_return": SOLVE_TARGET_RETURN,
                       "distdqn": ours, "sb3": theirs, "median_wall_s": med, "sb3_median_wall_s": med_sb3,
                       "median_wall_ratio": median_row.ratio,
                       "sb3_torch_threads": theirs[0]["torch_threads"] if theirs else None,
                       "sb3_threads_requested": sb3_threads}
    return rows


def _sb3_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stable-baselines3")
    except PackageNotFoundError:
        return "?"


def _jsonable(v: Any) -> Any:
    """Floats that JSON cannot hold (inf, nan) become None; containers recursively."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


__all__ = [
    "BareUpdate",
    "BenchError",
    "Row",
    "SteadyState",
    "bare_collector",
    "distdqn_time_to_solve",
    "main",
    "measure_collection",
    "measure_collection_ceiling",
    "measure_full_run",
    "measure_learning",
    "render",
    "sb3_time_to_solve",
    "steady_state",
]
