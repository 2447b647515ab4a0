"""Command line: ``distdqn train | eval | check-env | bench | plot``.

Exit codes: 0 success; 1 the run failed (e.g. a non-finite loss); 2 invalid config,
unknown environment or unusable run directory (nothing was started).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from distdqn.config import (
    AGENT_TOPOLOGIES,
    PRESETS,
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    from_dict,
    load_yaml,
)


def _fail(msg: str, code: int = 2) -> int:
    print(f"distdqn: error: {msg}", file=sys.stderr)
    return code


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """Merge preset <- --config FILE <- flags <- --set overrides, validate. Raises ConfigError."""
    data: dict[str, Any] = {}
    if args.config:
        data = load_yaml(args.config)
    flag_map = {
        "preset": "preset", "agent": "agent", "topology": "topology", "env": "env.id", "actors": "actor.num_actors",
        "envs_per_actor": "env.envs_per_actor", "total_env_steps": "total_env_steps",
        "seed": "seed", "runtime": "runtime", "device": "learner.device", "learners": "learner.num_learners",
        "address": "ray.address", "replay_shards": "ray.replay_shards", "env_backend": "env.backend",
    }
    flags = [f"{key}={getattr(args, attr)}" for attr, key in flag_map.items() if getattr(args, attr, None) is not None]
    if getattr(args, "no_progress", False):
        flags.append("progress=false")
    if getattr(args, "colocate", False):
        flags.append("colocate=true")
    data = apply_overrides(data, flags + list(args.set or []))
    cfg = from_dict(data)
    from distdqn.envs.user import absolute_paths

    return dataclasses.replace(cfg, env=absolute_paths(cfg.env))


def _default_run_dir(cfg: ExperimentConfig) -> Path:
    env = re.sub(r"[^A-Za-z0-9._-]+", "-", cfg.env.id.rsplit("/", 1)[-1] if ".py:" in cfg.env.id else cfg.env.id)
    env = env.strip("-")
    p = PRESETS[cfg.preset]
    name = cfg.preset if (p.agent, p.topology) == (cfg.agent, cfg.topology) else f"{cfg.agent}-{cfg.topology}"
    return Path("runs") / f"{env}-{name}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_devices(cfg: ExperimentConfig) -> None:
    """``learner.device: cuda`` needs a GPU here, except on Ray (whose learners may run on
    another node: the Ray runtime checks the cluster's GPUs). Raises ConfigError."""
    if cfg.learner.device == "cuda" and cfg.runtime != "ray":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("learner.device", "cuda", "auto or cpu (no CUDA device is available here)")


def cmd_train(args: argparse.Namespace) -> int:
    from distdqn.envs import EnvSpecError

    try:
        if args.resume:
            run_dir = Path(args.resume)
            cfg_path = run_dir / "config.yaml"
            if not cfg_path.is_file():
                return _fail(f"--resume {run_dir}: no config.yaml there (is it a run directory?)")
            if (msg := _fixed_on_resume(args)) is not None:
                return _fail(msg)
            data = apply_overrides(load_yaml(cfg_path), _train_flags_as_overrides(args))
            cfg = from_dict(data)
        else:
            cfg = build_config(args)
            run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(cfg)
        from distdqn.program import (
            build_network,
            check_replay_memory,
            frame_dedup_enabled,
            spaces_for,
        )

        spaces = spaces_for(cfg)
        build_network(cfg, spaces)  # a network the observations do not fit fails here, with the key
        frame_dedup_enabled(cfg, spaces)  # replay.frame_dedup=on needs frame stacks
        check_replay_memory(cfg, spaces)  # a replay larger than the machine fails here, not mid-run
        _check_devices(cfg)
        if cfg.runtime == "local":
            # The config and the env are valid: start the fork server now, so that its imports
            # (torch, Gymnasium) overlap ours; the actors will be forks of it.
            from distdqn.runtime.local.processes import start_process_server

            start_process_server()
    except (ConfigError, EnvSpecError) as exc:
        return _fail(str(exc))
    if not args.resume:
        if (run_dir / "checkpoints").exists():
            return _fail(f"run directory {run_dir} already holds a run; use --resume {run_dir} or another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"distdqn: {cfg.preset} ({cfg.agent} agent, {cfg.topology} topology) on {cfg.env.id}, "
          f"{cfg.actor.num_actors} actors x {cfg.env.envs_per_actor} envs, runtime={cfg.runtime}, seed={cfg.seed} "
          f"-> {run_dir}", file=sys.stderr)
    from distdqn.core import NonFiniteLossError
    from distdqn.runtime.driver import RunAborted

    try:
        if cfg.runtime == "serial":
            from distdqn.runtime.serial import run_serial

            summary = run_serial(cfg, spaces, run_dir, resume=bool(args.resume))
        elif cfg.runtime == "ray":
            from distdqn.runtime.ray import run_ray

            summary = run_ray(cfg, spaces, run_dir, resume=bool(args.resume))
        else:
            from distdqn.runtime.local import run_local

            summary = run_local(cfg, spaces, run_dir, resume=bool(args.resume))
    except (NonFiniteLossError, RunAborted) as exc:
        return _fail(str(exc), code=1)
    except (FileNotFoundError, ConfigError) as exc:  # a check that needs the roles built (after the ones above)
        return _fail(str(exc))
    _print_summary(summary, run_dir)
    return 0


RESUME_FLAGS = {"total_env_steps": "total_env_steps", "device": "learner.device", "address": "ray.address"}
"""``train`` flags that may change on ``--resume`` (how long and where the run goes on); the
others define the experiment and come from the run's ``config.yaml``."""
FIXED_ON_RESUME = ("preset", "agent", "topology", "env", "actors", "envs_per_actor", "seed", "learners", "colocate",
                   "replay_shards", "env_backend", "runtime", "config", "run_dir")
"""``train`` flags (argparse attribute names) refused with ``--resume``."""


def _fixed_on_resume(args: argparse.Namespace) -> str | None:
    """The error message when ``--resume`` comes with flags that would change the experiment."""
    fixed = [f"--{a.replace('_', '-')}" for a in FIXED_ON_RESUME if getattr(args, a, None) not in (None, False)]
    if not fixed:
        return None
    return (f"{', '.join(fixed)} cannot be given with --resume: the run's config.yaml defines the experiment and "
            "where its checkpoints can be restored (allowed with --resume: --total-env-steps, --device, --address, "
            "--no-progress, --set)")


def _train_flags_as_overrides(args: argparse.Namespace) -> list[str]:
    """``--resume``: the flags that may change, as overrides (then ``--set``)."""
    out = [f"{key}={getattr(args, attr)}" for attr, key in RESUME_FLAGS.items() if getattr(args, attr, None) is not None]
    if getattr(args, "no_progress", False):
        out.append("progress=false")
    return out + list(args.set or [])


def _print_summary(s: dict[str, Any], run_dir: Path) -> None:
    ev = s.get("final_eval_return")
    ev_txt = "n/a" if ev is None else f"{ev:.1f} over {s.get('eval_episodes')} episodes"
    solved = f", target reached at {s['solved_at_env_steps']} env steps" if s.get("solved") else ""
    print(
        f"done ({s['stop_reason']}): eval_return {ev_txt}{solved}; env_steps {s['env_steps']}, "
        f"updates {s['updates']}, {s['wall_time_s']:.1f}s, sps {s['sps']:.0f}, ups {s['ups']:.0f}; "
        f"{'unrolls' if s.get('agent') == 'actor_critic' else 'transitions'} produced {s['produced']} = "
        f"inserted {s['inserted']} + rejected {s['rejected']} "
        f"+ dropped {s['dropped']}; run dir {run_dir}"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from distdqn.envs import EnvSpecError
    from distdqn.io.checkpoint import load_latest
    from distdqn.program import build_evaluator, spaces_for

    run_dir = Path(args.run_dir)
    try:
        cfg = from_dict(load_yaml(run_dir / "config.yaml"))
        spaces = spaces_for(cfg)
    except (ConfigError, EnvSpecError) as exc:
        return _fail(f"{run_dir}: {exc}")
    found = load_latest(run_dir)
    if found is None:
        return _fail(f"{run_dir}: no usable checkpoint under {run_dir / 'checkpoints'}")
    path, state = found
    version, params = state["parameter_server"]["version"], state["params"].numpy()
    ev = build_evaluator(cfg, spaces)
    if args.seed is not None:
        ev.seed = args.seed
    from distdqn.roles.evaluator import EvaluationFailed

    try:
        returns = ev.evaluate(params, args.episodes)
    except EvaluationFailed as exc:
        return _fail(f"{run_dir}: {exc}", code=1)
    finally:
        ev.close()
    out = {"checkpoint": str(path), "param_version": int(version), "episodes": len(returns),
           "eval_return": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
           "returns": [float(r) for r in returns]}
    print(json.dumps(out, indent=2))
    return 0


def cmd_check_env(args: argparse.Namespace) -> int:
    """``distdqn check-env ENV``: make the env as training would, run Gymnasium's env checker
    on it, and print its spaces, the network and the replay's bytes per transition."""
    from distdqn.envs import EnvSpecError
    from distdqn.envs.check import describe

    try:
        data = load_yaml(args.config) if args.config else {}
        cfg = from_dict(apply_overrides(data, [f"env.id={args.env}", *(args.set or [])]))
        lines, problems = describe(cfg)
    except (ConfigError, EnvSpecError) as exc:
        return _fail(str(exc))
    print("\n".join(lines))
    return 1 if problems else 0


def cmd_plot(args: argparse.Namespace) -> int:
    from distdqn.io.plot import plot_runs

    try:
        out = plot_runs([Path(p) for p in args.run_dirs], Path(args.out) if args.out else None)
    except FileNotFoundError as exc:
        return _fail(str(exc))
    print(out)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from distdqn.bench import main as bench_main

    return bench_main(args)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distdqn", description="Distributed DQN and relatives: Ape-X, Gorila, "
                                "synchronous learners; one process, processes on this machine, or a Ray cluster.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or --resume) a run")
    t.add_argument("--preset", help="a tested agent + topology: " + ", ".join(PRESETS) + " (default apex)")
    t.add_argument("--agent", help="what is learned (overrides the preset's): " + ", ".join(AGENT_TOPOLOGIES))
    t.add_argument("--topology", help="which roles and data flow (overrides the preset's): "
                   + "; ".join(f"{a}: {', '.join(ts)}" for a, ts in AGENT_TOPOLOGIES.items()))
    t.add_argument("--learners", type=int, help="learners (gorila, sync)")
    t.add_argument("--colocate", action="store_true", help="gorila/sync: actor i and learner i share a process")
    t.add_argument("--env", help="Gymnasium id, e.g. CartPole-v1 or ALE/Pong-v5")
    t.add_argument("--env-backend", dest="env_backend", help="env.backend: gymnasium (default) or envpool")
    t.add_argument("--actors", type=int, help="actor processes")
    t.add_argument("--envs-per-actor", type=int, dest="envs_per_actor")
    t.add_argument("--total-env-steps", type=int, dest="total_env_steps")
    t.add_argument("--seed", type=int)
    t.add_argument("--runtime", help="local (processes, default), serial (one process, deterministic) "
                   "or ray (Ray actors; a private Ray instance unless --address)")
    t.add_argument("--address", help="runtime ray: join this Ray cluster (host:port, or auto) -> ray.address")
    t.add_argument("--replay-shards", type=int, help="runtime ray: replay shards (Ray actors) -> ray.replay_shards")
    t.add_argument("--device", help="learner device: auto, cpu or cuda")
    t.add_argument("--config", help="YAML file of config keys")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    t.add_argument("--run-dir", dest="run_dir", help="run directory (default runs/<env>-<preset>-s<seed>-<time>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    t.add_argument("--no-progress", action="store_true", dest="no_progress", help="no live progress display")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="greedy evaluation of a run's newest checkpoint")
    e.add_argument("run_dir")
    e.add_argument("--episodes", type=int, default=20)
    e.add_argument("--seed", type=int)
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("check-env", help="make an env as training would and say what distdqn makes of it")
    c.add_argument("env", help="a Gymnasium id, module:id, or an entry point package.module:callable")
    c.add_argument("--config", help="YAML file of config keys")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    c.set_defaults(func=cmd_check_env)

    pl = sub.add_parser("plot", help="plot metrics.csv of one or more runs to a PNG")
    pl.add_argument("run_dirs", nargs="+")
    pl.add_argument("--out", help="output PNG (default: <first run dir>/metrics.png)")
    pl.set_defaults(func=cmd_plot)

    b = sub.add_parser("bench", help="throughput against ceilings measured in the same run")
    b.add_argument("--env", help="Gymnasium id (default CartPole-v1, or the --config file's)")
    b.add_argument("--env-backend", dest="env_backend", help="env.backend: gymnasium (default) or envpool")
    b.add_argument("--actors", type=int, help="actor processes (default 2)")
    b.add_argument("--config", help="YAML file of config keys (e.g. configs/pong.yaml)")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    b.add_argument("--rows", choices=["auto", "classic", "env", "seed"], default="auto",
                   help="classic (CartPole rows a-d), env (raw env .. replay memory, rows a-f; with the r2d2 agent "
                        "its sequence replay's bytes per env step) or seed (SEED's central inference against apex "
                        "actors); auto: env for Atari ids and --env-backend envpool")
    b.add_argument("--seed-envs", dest="seed_envs", default="4,16,64",
                   help="--rows seed: envs per worker, comma-separated (default 4,16,64)")
    b.add_argument("--seconds", type=float, help="measurement window per row (default 10, --quick 3)")
    b.add_argument("--quick", action="store_true", help="3 s per row, no time-to-solve rows")
    b.add_argument("--replay-capacity", type=int, dest="replay_capacity",
                   help="env rows (e, f): replay capacity (default 1,000,000)")
    b.add_argument("--seeds", default="0,1,2", help="seeds for the time-to-solve rows")
    b.add_argument("--skip-solve", action="store_true", help="skip the time-to-solve rows")
    b.add_argument("--skip-sb3", action="store_true", help="skip the Stable-Baselines3 comparison")
    b.add_argument("--soak", type=float, metavar="MINUTES",
                   help="instead of the rows: a soak of apex on CartPole for MINUTES, an actor killed every "
                        "--soak-kill-period s; RSS of every process, sps over time, the accounting")
    b.add_argument("--soak-kill-period", type=float, default=30.0, dest="soak_kill_period",
                   help="seconds between actor kills in a soak (default 30)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    b.add_argument("--sb3-threads", type=int, dest="sb3_threads",
                   help="torch threads for the Stable-Baselines3 reference (default: torch's default)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C before a run's own handler is in place (set-up) or after it
        print("distdqn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
