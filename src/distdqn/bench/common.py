"""What the bench rows share: constants, random transitions, timing, steady-state rates."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distdqn.bench.report import BenchError
from distdqn.config import ExperimentConfig, from_dict
from distdqn.envs import EnvSpaces

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

LEARNING_ROUNDS = 3
"""(b) alternates the two loops this many times, so slow drifts in machine load hit both."""
COLLECTION_ROUNDS = 3
"""(a) takes this many collection runs, each between two ceiling measurements, for the
same reason: this machine's speed swings between a ceiling taken before one
long run and one taken after it."""
FILL_LIMIT = 100_000
"""(b) fills the replay with min(capacity, this) random transitions."""


def random_transitions(spaces: EnvSpaces, n: int, rng: np.random.Generator, discount: float) -> dict[str, np.ndarray]:
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


def timed(fn: Callable[[], Any], seconds: float, sync: Callable[[], None] | None = None) -> tuple[int, float]:
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
    """Rates over a window of ``metrics.csv`` rows that excludes start-up and shutdown;
    the window runs from ``start_s`` to ``end_s`` (the rows' ``wall_time``, seconds)."""

    sps: float
    ups: float
    window_s: float
    env_steps: int
    rows: int
    start_s: float = 0.0
    end_s: float = 0.0


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
    return SteadyState(sps=(s1 - s0) / dt, ups=(u1 - u0) / dt, window_s=dt, env_steps=s1 - s0, rows=len(window),
                       start_s=t0, end_s=t1)


def base_config(env_id: str, actors: int) -> ExperimentConfig:
    """The default (apex) config with the benchmark's env and actor count, no progress bar."""
    return from_dict({"env": {"id": env_id}, "actor": {"num_actors": actors}, "progress": False})


def local_run(cfg: ExperimentConfig, spaces: EnvSpaces, run_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """``run_local`` for a measurement; its summary.

    Raises:
        BenchError: the run was stopped by SIGINT or SIGTERM (a run stops gracefully on
            them; the benchmark must not go on to its next measurement).
    """
    from distdqn.runtime.local import (
        run_local,  # the local runtime only when a run is measured
    )

    summary = run_local(cfg, spaces, run_dir, **kwargs)
    if summary.get("stop_reason") in ("SIGINT", "SIGTERM"):
        raise BenchError(f"interrupted ({summary['stop_reason']}); the benchmark stops")
    return summary


def learning_step_under_test(cfg: ExperimentConfig, spaces: EnvSpaces) -> tuple[ExperimentConfig, Any, Any, Any, Any]:
    """``(cfg, replay, parameter server, updater, shared parameters)`` of the learning step a
    (b) row times: ``cfg`` without evaluation or checkpoints, on ``learner.torch_threads``
    threads, publishing into shared memory as the local runtime does."""
    import multiprocessing as mp

    import torch

    from distdqn.config import replace
    from distdqn.program import build_parameter_server, build_replay
    from distdqn.runtime.local.shared import SharedParams
    from distdqn.topologies import make_updater

    c = replace(cfg, **{"eval.eval_period": 0, "eval.target_return": None, "checkpoint_period": 0})
    torch.set_num_threads(c.learner.torch_threads)
    replay, ps = build_replay(c, spaces), build_parameter_server(c, spaces)
    return c, replay, ps, make_updater(c, spaces, ps), SharedParams(mp.get_context("spawn"), ps.num_params)
