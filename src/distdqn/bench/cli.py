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
:mod:`distdqn.bench.env_rows` instead: raw env, collection, bare update, learner, replay
throughput and replay memory (plus time-to-solve for CartPole-v1); with the r2d2 agent
(``--set preset=r2d2``) the env rows are its sequence replay's bytes per env step
(:mod:`distdqn.bench.sequence_replay`).

Exit codes: 0 the benchmark ran (targets met or not: see the table); 1 a run failed;
2 invalid config or unknown environment.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from distdqn.bench.classic import classic_notes, throughput_rows
from distdqn.bench.common import (
    DEFAULT_SECONDS,
    QUICK_SECONDS,
    REPLAY_CAPACITY,
    SOLVE_ENV,
)
from distdqn.bench.env_rows import env_notes, env_rows
from distdqn.bench.report import BenchError, jsonable, render, say
from distdqn.bench.seed_rows import seed_notes, seed_rows
from distdqn.bench.sequence_replay import sequence_replay_notes, sequence_replay_rows
from distdqn.bench.solve import solve_notes, solve_rows
from distdqn.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    from_dict,
    load_yaml,
)
from distdqn.core import NonFiniteLossError
from distdqn.envs import EnvSpecError, is_atari
from distdqn.program import learner_device, spaces_for
from distdqn.runtime.local.processes import start_process_server


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError("--seeds", text, "comma-separated integers >= 0, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0:
        raise ConfigError("--seeds", text, "comma-separated integers >= 0, e.g. 0,1,2")
    return seeds


def bench_config(args: argparse.Namespace) -> ExperimentConfig:
    """The default (apex) config, then ``--config``, then ``--env``, ``--env-backend``,
    ``--actors`` and ``--set``; no progress bar. Raises ConfigError."""
    data: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    flags = ["progress=false"]
    for attr, key in (("env", "env.id"), ("env_backend", "env.backend"), ("actors", "actor.num_actors")):
        if getattr(args, attr, None) is not None:
            flags.append(f"{key}={getattr(args, attr)}")
    return from_dict(apply_overrides(data, flags + list(getattr(args, "set", None) or [])))


def bench_mode(cfg: ExperimentConfig, rows: str = "auto") -> str:
    """``classic`` (rows a-d, :mod:`distdqn.bench.classic`) or ``env`` (:mod:`distdqn.bench.env_rows`); ``auto``:
    env for Atari ids and the envpool backend, classic otherwise."""
    if rows in ("classic", "env", "seed"):
        return rows
    return "env" if is_atari(cfg.env.id) or cfg.env.backend == "envpool" else "classic"


def main(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see ``distdqn bench --help``); print the
    table, optionally write ``--json``. Returns the exit code."""
    if getattr(args, "soak", None) is not None:
        return _soak_main(args)
    default_threads = torch.get_num_threads()
    quick = bool(getattr(args, "quick", False))
    seconds = args.seconds if args.seconds is not None else (QUICK_SECONDS if quick else DEFAULT_SECONDS)
    try:
        if seconds <= 0:
            raise ConfigError("--seconds", seconds, "a number > 0")
        cfg = bench_config(args)
        mode = bench_mode(cfg, getattr(args, "rows", None) or "auto")
        solve = not args.skip_solve and not quick and mode != "seed" and (mode == "classic" or cfg.env.id == SOLVE_ENV)
        seed_envs = tuple(_parse_seeds(getattr(args, "seed_envs", None) or "4,16,64"))
        if any(e < 2 or e % 2 for e in seed_envs):
            raise ConfigError("--seed-envs", getattr(args, "seed_envs", None), "even env counts >= 2, e.g. 4,16,64")
        seeds = _parse_seeds(args.seeds) if solve else []
        capacity = int(getattr(args, "replay_capacity", None) or REPLAY_CAPACITY)
        if capacity < 10_000:
            raise ConfigError("--replay-capacity", capacity, "an integer >= 10000")
        spaces = spaces_for(cfg)
    except (ConfigError, EnvSpecError) as exc:
        print(f"distdqn: error: {exc}", file=sys.stderr)
        return 2
    # As `distdqn train` does once its config is valid: the local runtime's children are forks
    # of this server (distdqn.runtime.local.processes), which imports torch once, here.
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
            if mode == "seed":
                rows = seed_rows(cfg, spaces, float(seconds), Path(tmp), report, seed_envs)
            elif mode == "env" and cfg.agent == "r2d2":
                rows = sequence_replay_rows(cfg, spaces, report)
            elif mode == "env":
                rows = env_rows(cfg, spaces, float(seconds), Path(tmp), report, capacity)
            else:
                rows = throughput_rows(cfg, spaces, float(seconds), Path(tmp), report)
            if seeds:
                rows += solve_rows(seeds, cfg.actor.num_actors, run_sb3, sb3_threads, Path(tmp), report,
                                    label="(d)" if mode == "classic" else "(g)", backend=cfg.env.backend)
    except (NonFiniteLossError, BenchError) as exc:
        print(f"distdqn: error: {exc}", file=sys.stderr)
        return 1
    if mode == "seed":
        notes = seed_notes(cfg, report)
    elif mode == "env" and cfg.agent == "r2d2":
        notes = sequence_replay_notes(report)
    elif mode == "env":
        notes = env_notes(cfg, spaces, report) + solve_notes(cfg, report)
    else:
        notes = classic_notes(cfg, report)
    if sb3_missing:
        notes.append("Stable-Baselines3 is not installed: SB3 column skipped "
                     "(pip install stable-baselines3, or pip install -e '.[bench]').")
    render(rows, notes)
    if args.json:
        report["rows"] = [{"label": r.label, "value": r.value, "ceiling": r.ceiling, "ratio": r.ratio,
                           "target": None if r.target is None else f"{r.target[0]} {r.target[1]}", "met": r.met}
                          for r in rows]
        Path(args.json).write_text(json.dumps(jsonable(report), indent=2) + "\n")
        say(f"figures written to {args.json}")
    return 0


def _soak_main(args: argparse.Namespace) -> int:
    """``--soak MINUTES`` (:mod:`distdqn.bench.soak`): the run's flags are the bench's
    ``--config``, ``--env``, ``--actors`` and ``--set``, checked here first."""
    from distdqn.bench.soak import render_soak, soak

    try:
        if args.soak <= 0:
            raise ConfigError("--soak", args.soak, "minutes > 0")
        if args.soak_kill_period <= 0:
            raise ConfigError("--soak-kill-period", args.soak_kill_period, "seconds > 0")
        cfg = bench_config(args)
        spaces_for(cfg)
    except (ConfigError, EnvSpecError) as exc:
        print(f"distdqn: error: {exc}", file=sys.stderr)
        return 2
    train_args = [a for attr, flag in (("config", "--config"), ("env", "--env"), ("actors", "--actors"))
                  if getattr(args, attr, None) is not None for a in (flag, str(getattr(args, attr)))]
    train_args += [a for kv in (getattr(args, "set", None) or []) for a in ("--set", kv)]
    report: dict[str, Any] = {"mode": "soak", "env": cfg.env.id, "actors": cfg.actor.num_actors}
    try:
        with tempfile.TemporaryDirectory(prefix="distdqn-soak-") as tmp:
            met = soak(float(args.soak), float(args.soak_kill_period), train_args, Path(tmp), report)
    except BenchError as exc:
        print(f"distdqn: error: {exc}", file=sys.stderr)
        return 1
    render_soak(report, met)
    if args.json:
        Path(args.json).write_text(json.dumps(jsonable(report), indent=2) + "\n")
        say(f"figures written to {args.json}")
    return 0
