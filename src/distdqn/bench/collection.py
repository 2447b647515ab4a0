"""Row (a): collection, the local runtime's actors with the learner idle, against bare
processes stepping the same envs with the same forward pass."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distdqn.agents.dqn.agent import apex_epsilons
from distdqn.agents.inference import trace_for_inference
from distdqn.bench.common import COLLECTION_ROUNDS, local_run, steady_state, timed
from distdqn.bench.cpu import CpuMeter
from distdqn.bench.report import BenchError, say
from distdqn.config import ExperimentConfig, replace
from distdqn.envs import EnvSpaces, make_vector_env
from distdqn.program import build_agent, build_network


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
    stateful = getattr(build_agent(cfg, spaces), "eval_policy", None)
    if stateful is not None:  # a recurrent agent: its per-env state steps along (and resets)
        net = stateful(net, n)
    elif cfg.actor.trace_network:  # the forward pass the actors use
        net = trace_for_inference(net, torch.from_numpy(obs))

    def step() -> None:
        nonlocal obs
        with torch.inference_mode():
            greedy = net(torch.from_numpy(obs)).argmax(dim=1).numpy()
        actions = np.where(rng.random(n) < eps, rng.integers(spaces.num_actions, size=n), greedy)
        next_obs, reward, terminated, truncated, _ = envs.step(actions)
        next_obs = np.asarray(next_obs)
        done = np.logical_or(terminated, truncated)
        if stateful is not None:
            net.after_step(actions, np.asarray(reward), done)
        if done.any():
            reset_obs, _ = envs.reset(options={"reset_mask": done})
            next_obs = np.where(done.reshape(-1, *([1] * (next_obs.ndim - 1))), np.asarray(reset_obs), next_obs)
        obs = next_obs

    for _ in range(200):  # warm-up
        step()
    barrier.wait(timeout=300)
    steps, elapsed = timed(step, seconds)
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
    ``cores`` (None when not measured) is the mean number of cores its processes kept busy
    in that window (:class:`~distdqn.bench.cpu.CpuMeter`), and ``cpu_us_per_env_step`` the
    CPU microseconds one env step cost there.
    """
    warm = cfg.actor.epsilon_decay_steps if cfg.actor.epsilon_schedule == "linear" else 0
    if warm_env_steps is not None:
        warm = int(warm_env_steps)
    budget = int(warm + max(expected_sps, 1000.0) * (seconds + 1.0))
    c = replace(cfg, **{"replay.samples_per_insert": 0.0, "eval.eval_period": 0, "eval.target_return": None,
                        "total_env_steps": budget, "log_period": 0.5, "checkpoint_period": 0})
    run_dir.mkdir(parents=True, exist_ok=True)
    with CpuMeter(run_dir / "metrics.csv") as meter:
        summary = local_run(c, spaces, run_dir, collect_only=True)
    steady = steady_state(run_dir, warm)
    cores = meter.cores(steady.start_s, steady.end_s) if steady else None
    return {
        "sps": steady.sps if steady else summary["sps"],
        "cores": cores,
        "cpu_us_per_env_step": cores * 1e6 / steady.sps if cores is not None and steady.sps > 0 else None,
        "steady_state": asdict(steady) if steady else None,
        "summary_sps": summary["sps"],
        "total_env_steps": budget,
        "warm_env_steps": warm,
        "wall_time_s": summary["wall_time_s"],
    }


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
    say(f"(a) collection ceiling: {a} bare processes x {e} envs, {window / 2:.3g} s")
    ceilings = [measure_collection_ceiling(cfg, spaces, window / 2)]
    runs = []
    for r in range(rounds):
        say(f"(a) collection, round {r + 1}/{rounds}: run_local(collect_only=True), >= {window:.3g} s after warm-up")
        runs.append(measure_collection(cfg, spaces, window, ceilings[-1]["sps"], work / f"collect{r}"))
        say(f"(a) collection ceiling: {window / 2:.3g} s")
        ceilings.append(measure_collection_ceiling(cfg, spaces, window / 2))
    sides = [(ceilings[r]["sps"] + ceilings[r + 1]["sps"]) / 2 for r in range(rounds)]
    return {"sps": float(np.mean([x["sps"] for x in runs])), "ceiling_sps": float(np.mean(sides)),
            "round_ratios": [x["sps"] / c for x, c in zip(runs, sides)], "runs": runs, "ceilings": ceilings,
            "warm_env_steps": runs[0]["warm_env_steps"], "window_s": window}
