"""``distdqn bench --rows seed``: SEED RL's central inference against Ape-X's actors.

For each envs-per-worker count (``--seed-envs``, default 4, 16, 64) both topologies collect
with the learner idle (``run_local(collect_only=True)``, steady state from ``metrics.csv``),
with the same env, the same worker processes and the same total envs, in alternating runs
(apex, seed, apex, seed) of one sitting. The seed figure is set against the apex one
(target on CPU: seed >= 1.2 x apex at 64 envs per worker on CartPole), and so is the CPU
time one env step costs each (:class:`~distdqn.bench.cpu.CpuMeter`: every process of the
run, in the steady window). seed passes take one half of every worker
(``inference.max_batch`` = workers x envs / 2). Each count also measures raw env stepping
in the same processes (no network, no transport): no collector can pass it.

The inference round trip (request sent to actions received, as the env workers see it;
target p50 <= 1 ms at batch 64 with the CartPole MLP) has a run of its own: one env worker
of 128 envs (two halves of 64), so that every pass is one request of 64 observations and
no request waits for another worker's half to fill its batch. The rows per envs count
give the round trip at their own batches too, with that wait in it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from distdqn.bench.collection import measure_collection, measure_collection_ceiling
from distdqn.bench.env_rows import bare_env_stepper
from distdqn.bench.report import Row, say
from distdqn.config import ExperimentConfig, replace
from distdqn.envs import EnvSpaces, is_atari

ROUNDS = 2
SEED_ENVS = (4, 16, 64)
LATENCY_BATCH = 64
"""Observations per pass in the round-trip run (one worker of twice as many envs)."""


def topology_config(cfg: ExperimentConfig, topology: str, envs: int) -> ExperimentConfig:
    """``cfg`` (apex) as ``topology`` with ``envs`` envs per worker; seed passes batch one
    half of every worker."""
    c = replace(cfg, **{"env.envs_per_actor": envs})
    if topology == "apex":
        return c
    return replace(c, **{"preset": "seed", "topology": "seed",
                         "inference.max_batch": max(1, cfg.actor.num_actors * envs // 2)})


def latency_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The round-trip run's config: ``cfg`` as seed with one env worker of
    ``inference.splits`` x :data:`LATENCY_BATCH` envs, so that each pass is one request of
    a whole half."""
    return topology_config(replace(cfg, **{"actor.num_actors": 1}), "seed", cfg.inference.splits * LATENCY_BATCH)


def _latency(run_dir: Path) -> dict[str, float | None]:
    """The last logged inference figures of a seed run."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("inference_latency_ms_p50")]
    if not rows:
        return {"p50": None, "p99": None, "batch": None, "env_step_share": None}
    last = rows[-1]

    def num(key: str) -> float | None:
        return float(last[key]) if last.get(key) else None

    return {"p50": num("inference_latency_ms_p50"), "p99": num("inference_latency_ms_p99"),
            "batch": num("inference_batch"), "env_step_share": num("env_step_share")}


def seed_rows(cfg: ExperimentConfig, spaces: EnvSpaces, seconds: float, work: Path, report: dict[str, Any],
              envs_list: tuple[int, ...] = SEED_ENVS) -> list[Row]:
    """The rows (module docstring); figures into ``report["seed"]``."""
    rows: list[Row] = []
    out: dict[str, Any] = {}
    cartpole = cfg.env.id == "CartPole-v1"
    for envs in envs_list:
        runs: dict[str, list[float]] = {"apex": [], "seed": []}
        cpu: dict[str, list[dict[str, float | None]]] = {"apex": [], "seed": []}
        lat = None
        for r in range(ROUNDS):
            for topo in ("apex", "seed"):
                c = topology_config(cfg, topo, envs)
                d = work / f"seed-rows-{envs}-{topo}-{r}"
                say(f"seed rows: {topo}, {cfg.actor.num_actors} workers x {envs} envs, round {r + 1}/{ROUNDS}")
                # sizes the run's budget (at least `seconds` measured): the last rate seen
                seen = runs[topo] or runs["apex"]
                expected = float(np.mean(seen)) if seen else (2_000.0 if is_atari(cfg.env.id) else 20_000.0)
                got = measure_collection(c, spaces, seconds, expected, d, warm_env_steps=envs * 200)
                runs[topo].append(got["sps"])
                cpu[topo].append({"cores": got["cores"], "cpu_us_per_env_step": got["cpu_us_per_env_step"]})
                if topo == "seed":
                    lat = _latency(d)
        apex_sps, seed_sps = float(np.mean(runs["apex"])), float(np.mean(runs["seed"]))
        say(f"seed rows: raw env stepping, {cfg.actor.num_actors} processes x {envs} envs (no network)")
        raw = measure_collection_ceiling(topology_config(cfg, "apex", envs), spaces, seconds / 2,
                                         target=bare_env_stepper)["sps"]
        out[str(envs)] = {"apex_sps": runs["apex"], "seed_sps": runs["seed"], "latency": lat, "raw_env_sps": raw,
                          "apex_cpu": cpu["apex"], "seed_cpu": cpu["seed"]}
        target = (">=", 1.2) if cartpole and envs == 64 else None
        rows.append(Row(f"seed collection, {envs} envs/worker (env steps/s)", seed_sps, apex_sps,
                        "apex, same envs and processes", target))
        rows.append(Row(f"  apex collection / raw env stepping, {envs} envs/worker", apex_sps, raw,
                        "raw env, same processes"))
        apex_us, seed_us = (_mean(cpu[t], "cpu_us_per_env_step") for t in ("apex", "seed"))
        if apex_us is not None and seed_us is not None:
            rows.append(Row(f"  seed CPU us per env step / apex's, {envs} envs/worker", seed_us, apex_us,
                            "apex, same run", fmt=".2f"))
        if lat is not None and lat["p50"] is not None:
            rows.append(Row(f"  seed inference round trip p50 (ms), {envs} envs/worker, batch {lat['batch'] or 0:.0f}",
                            lat["p50"], 1.0, "1 ms", fmt=".3f"))
    report["seed"] = out
    if cartpole:
        rows.append(_round_trip_row(cfg, spaces, seconds, work, report))
    return rows


def _round_trip_row(cfg: ExperimentConfig, spaces: EnvSpaces, seconds: float, work: Path,
                    report: dict[str, Any]) -> Row:
    c = latency_config(cfg)
    d = work / "seed-round-trip"
    say(f"seed rows: round trip, 1 worker x {c.env.envs_per_actor} envs (passes of {LATENCY_BATCH})")
    got = measure_collection(c, spaces, seconds, 20_000.0, d, warm_env_steps=c.env.envs_per_actor * 200)
    lat = _latency(d)
    report["seed_round_trip"] = {"sps": got["sps"], "latency": lat}
    return Row(f"seed inference round trip p50 (ms), batch {lat['batch'] or 0:.0f} (1 worker, requests of "
               f"{LATENCY_BATCH})", lat["p50"], 1.0, "1 ms",
               ("<=", 1.0), fmt=".3f")


def _mean(runs: list[dict[str, float | None]], key: str) -> float | None:
    got = [r[key] for r in runs if r.get(key) is not None]
    return float(np.mean(got)) if got else None


def seed_notes(cfg: ExperimentConfig, report: dict[str, Any]) -> list[str]:
    notes = [f"seed rows: {cfg.actor.num_actors} worker processes, learner idle, {ROUNDS} alternating rounds "
             "per topology; per-run env steps/s:"]
    for envs, got in report.get("seed", {}).items():
        lat = got["latency"] or {}
        share = lat.get("env_step_share")
        notes.append(f"  {envs} envs/worker: apex {', '.join(f'{x:,.0f}' for x in got['apex_sps'])}; seed "
                     f"{', '.join(f'{x:,.0f}' for x in got['seed_sps'])}; seed latency p50 {lat.get('p50')} ms, "
                     f"p99 {lat.get('p99')} ms, env workers' share of time in env.step "
                     f"{'-' if share is None else f'{share:.2f}'}")
        for topo in ("apex", "seed"):
            cores, us = _mean(got[f"{topo}_cpu"], "cores"), _mean(got[f"{topo}_cpu"], "cpu_us_per_env_step")
            if cores is not None and us is not None:
                notes.append(f"    {topo}: {cores:.2f} of {os.cpu_count()} cores busy, {us:.2f} CPU us per env step "
                             f"(so at most {os.cpu_count() * 1e6 / us:,.0f} env steps/s on all cores)")
    rt = report.get("seed_round_trip")
    if rt:
        lat = rt["latency"]
        notes.append(f"  round trip run (1 worker, passes of {LATENCY_BATCH}): p50 {lat.get('p50')} ms, p99 "
                     f"{lat.get('p99')} ms, mean batch {lat.get('batch')}, {rt['sps']:,.0f} env steps/s")
    return notes
