"""The classic rows (a) to (c) for classic-control ids: collection, learning, the full run."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from distdqn.bench.collection import measure_collection_rounds
from distdqn.bench.common import (
    COLLECTION_TARGET,
    LEARNING_TARGET,
    local_run,
    steady_state,
)
from distdqn.bench.learning import measure_learning
from distdqn.bench.report import Row, say
from distdqn.bench.solve import solve_notes
from distdqn.config import ExperimentConfig, replace
from distdqn.envs import EnvSpaces


def measure_full_run(cfg: ExperimentConfig, spaces: EnvSpaces, budget: int, run_dir: Path) -> dict[str, Any]:
    """(c): a normal ``run_local`` of ``cfg`` (periodic evaluation included) for
    ``total_env_steps=budget``; ``eval.target_return`` is cleared so that reaching it
    does not end the measurement early."""
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = local_run(replace(cfg, **{"total_env_steps": budget, "eval.target_return": None}), spaces, run_dir)
    steady = steady_state(run_dir)
    return {"sps": summary["sps"], "ups": summary["ups"], "wall_time_s": summary["wall_time_s"],
            "env_steps": summary["env_steps"], "updates": summary["updates"],
            "stop_reason": summary["stop_reason"], "steady_state": asdict(steady) if steady else None}


def throughput_rows(cfg: ExperimentConfig, spaces: EnvSpaces, seconds: float, work: Path,
                     report: dict[str, Any]) -> list[Row]:
    """Rows (a), (b), (c); their figures go into ``report``. For the actor-critic agent,
    (a) collects into a uniform replay (a FIFO that nobody reads would pause the actors)
    and (b) is the impala learner against a bare V-trace loop."""
    actor_critic = cfg.agent == "actor_critic"
    coll_cfg = replace(cfg, **{"replay.kind": "uniform", "replay.capacity": 100_000}) if actor_critic else cfg
    coll = measure_collection_rounds(coll_cfg, spaces, seconds, work)
    report["collection"] = coll
    a, e = cfg.actor.num_actors, cfg.env.envs_per_actor
    ceiling_sps = coll["ceiling_sps"]
    rows = [Row(f"(a) collection: env steps/s, {a} actors x {e} envs, learner idle", coll["sps"], ceiling_sps,
                f"(bare env + forward, {a} procs)", (">=", COLLECTION_TARGET))]

    say(f"(b) learning: learner step vs bare update loop, {seconds:g} s each")
    if actor_critic:
        from distdqn.bench.impala_learning import measure_impala_learning

        learn = measure_impala_learning(cfg, spaces, seconds, work / "learn")
        label = f"(b) learning: updates/s, {learn['batch_size']} unrolls of {learn['unroll_length']} steps"
        ceiling = "(bare V-trace update)"
    elif cfg.agent == "r2d2":
        from distdqn.bench.r2d2_learning import measure_r2d2_learning

        learn = measure_r2d2_learning(cfg, spaces, seconds, work / "learn")
        label = (f"(b) learning: updates/s, {learn['batch_size']} sequences of {learn['sequence_steps']} steps "
                 f"(burn-in {learn['burn_in']})")
        ceiling = "(bare R2D2 update)"
    else:
        learn = measure_learning(cfg, spaces, seconds, work / "learn")
        label = f"(b) learning: updates/s, batch {learn['batch_size']}, replay {learn['replay_size']:,}"
        ceiling = "(bare torch update)"
    report["learning"] = learn
    rows.append(Row(label, learn["ups"], learn["ceiling_ups"], ceiling, (">=", LEARNING_TARGET)))

    spi = cfg.replay.samples_per_insert
    per_item = cfg.r2d2.sequence_period if cfg.agent == "r2d2" else 1  # env steps per item (per env)
    est = coll["sps"] if spi <= 0 else min(coll["sps"], learn["ups"] * cfg.learner.batch_size / spi * per_item)
    budget = max(int(est * seconds), cfg.replay.min_replay_size * 2 * per_item)
    say(f"(c) full training run: run_local, {budget:,} env steps")
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


def classic_notes(cfg: ExperimentConfig, report: dict[str, Any]) -> list[str]:
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
    return notes + solve_notes(cfg, report)
