"""``distdqn bench`` env mode: throughput of one environment and backend from the raw env
up to the replay, each figure next to a ceiling measured in the same run.

Selected by ``--rows env``, and by default for Atari ids and ``--env-backend envpool``
(``distdqn bench --env ALE/Pong-v5 --env-backend envpool``). Rows:

(a) Raw env: env steps/s of ``--actors`` spawned processes, each stepping
    ``make_vector_env(cfg.env, envs_per_actor)`` (the chosen backend) with uniformly
    random actions, finished sub-envs reset with a mask; no network. Measured in two
    halves, before and after (b). The ceiling of (b).
(a') Raw env plus inference: :func:`distdqn.bench.collection.bare_collector` (the vector env and the
    actors' forward pass per step, epsilon 1) in as many processes; its ratio to (a) is what
    inference alone leaves of the raw rate, and (b)'s ratio to it is the cost of everything
    else (n-step windows, priorities, chunks, transport, the learner process's share of the
    CPU).
(b) Collection: env steps/s of ``run_local(collect_only=True)`` (actors with inference,
    n-step windows, priorities, chunks, transport; the learner only inserts), steady state
    from ``metrics.csv``, with epsilon 1 so actions are as random as in (a). Target
    ratio to (a) >= :data:`ENV_COLLECTION_TARGET`.
(c) Bare update: :class:`distdqn.bench.learning.BareUpdate`, the double-DQN update of the chosen
    network and batch on in-memory batches. The ceiling of (d).
(d) Learner: :func:`distdqn.bench.learning.measure_learning` (sample, learn, update priorities, publish)
    on a replay filled with actor-shaped transitions (compact frame chunks for
    frame-deduplicated replay), the two loops alternating. Target ratio to (c) >=
    :data:`distdqn.bench.common.LEARNING_TARGET`.
(e) Replay at ``--replay-capacity`` (1,000,000): transitions/s inside ``Replay.insert``
    while filling it with actor-shaped chunks, against bare numpy copies of the same
    bytes; ``sample(512) + update_priorities(512)`` calls/s on the full replay, against a
    bare numpy gather of the same rows. In a fresh process (:mod:`distdqn.bench.replay_rows`).
(f) Replay memory: resident-set growth of that process per transition, against one
    84x84 frame (7,056 bytes) for frame-deduplicated storage (target ratio <=
    :data:`MEMORY_TARGET`), or the transition's own bytes otherwise (no target).
(g) CartPole-v1 only (not with ``--skip-solve``/``--quick``): time to solve per seed
    against Stable-Baselines3, as row (d) of the classic mode, on the chosen backend.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import numpy as np

from distdqn.bench.collection import (
    bare_collector,
    measure_collection,
    measure_collection_ceiling,
)
from distdqn.bench.common import LEARNING_TARGET
from distdqn.bench.learning import measure_learning
from distdqn.bench.replay_rows import (
    FRAME_BYTES,
    ReplaySpec,
    measure_replay,
    proc_kb_field,
)
from distdqn.bench.report import Row, say
from distdqn.config import ExperimentConfig, replace
from distdqn.envs import EnvSpaces, make_vector_env
from distdqn.program import frame_dedup_enabled

ENV_COLLECTION_TARGET = 0.7
"""(b) / (a): the share of raw env throughput that survives inference and the actor's work."""
MEMORY_TARGET = 1.1
"""(f): bytes per transition / one 84x84 frame, for frame-deduplicated replay."""
REPLAY_CAPACITY = 1_000_000
REPLAY_BATCH = 512
MEMORY_HEADROOM = 1.3
"""(e, f) need this many times the replay's expected size free (MemAvailable), else the
capacity is reduced (and the note says so)."""

__all__ = ["ENV_COLLECTION_TARGET", "MEMORY_TARGET", "bare_env_stepper", "env_notes", "env_rows"]


def bare_env_stepper(
    cfg: ExperimentConfig, spaces: EnvSpaces, actor_id: int, seconds: float, barrier: Any, out: Any
) -> None:
    """Body of one (a) process: the vector env with uniformly random actions, finished
    sub-envs reset in place; nothing else. Puts ``(actor_id, env_steps, elapsed_s)`` on
    ``out`` after ``seconds`` of stepping that starts, for all processes together, at
    ``barrier``."""
    envs = make_vector_env(cfg.env, cfg.env.envs_per_actor)
    n = envs.num_envs
    rng = np.random.default_rng([cfg.seed, actor_id, 5])
    envs.reset(seed=[int(s) for s in rng.integers(2**31 - 1, size=n)])
    actions = rng.integers(spaces.num_actions, size=(4096, n))

    def step(k: int) -> None:
        _, _, terminated, truncated, _ = envs.step(actions[k % 4096])
        done = np.logical_or(terminated, truncated)
        if done.any():
            envs.reset(options={"reset_mask": done})

    for k in range(100):  # warm-up
        step(k)
    barrier.wait(timeout=300)
    steps, t0 = 0, time.perf_counter()
    deadline = t0 + seconds
    while True:
        step(steps)
        steps += 1
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - t0
    envs.close()
    out.put((actor_id, steps * n, elapsed))


def _mem_available() -> int | None:
    return proc_kb_field("/proc/meminfo", "MemAvailable:")


def _replay_spec(cfg: ExperimentConfig, spaces: EnvSpaces, capacity: int, seconds: float) -> ReplaySpec:
    return ReplaySpec(
        capacity=capacity, obs_shape=tuple(spaces.obs_shape), obs_dtype=str(np.dtype(spaces.obs_dtype)),
        frame_dedup=frame_dedup_enabled(cfg, spaces), kind=cfg.replay.kind, actors=cfg.actor.num_actors,
        envs_per_actor=cfg.env.envs_per_actor, n_step=cfg.actor.n_step, chunk_size=cfg.actor.chunk_size,
        num_actions=spaces.num_actions, gamma=cfg.learner.gamma, batch=REPLAY_BATCH, seconds=seconds,
        seed=cfg.seed)


def _fit_capacity(spec: ReplaySpec) -> tuple[int, str | None]:
    """The requested capacity, or a smaller one that fits in free memory (with a reason)."""
    per = (FRAME_BYTES * 1.05 + 64) if spec.frame_dedup else \
        (2 * np.dtype(spec.obs_dtype).itemsize * int(np.prod(spec.obs_shape)) + 64)
    avail = _mem_available()
    need = spec.capacity * per * MEMORY_HEADROOM
    if avail is None or need <= avail:
        return spec.capacity, None
    cap = max(10_000, int(avail / (per * MEMORY_HEADROOM)) // 10_000 * 10_000)
    return cap, (f"only {avail / 1e9:.1f} GB free, {spec.capacity:,} transitions need about {need / 1e9:.1f} GB: "
                 f"measured at {cap:,}")


def env_rows(cfg: ExperimentConfig, spaces: EnvSpaces, seconds: float, work: Path, report: dict[str, Any],
             replay_capacity: int = REPLAY_CAPACITY) -> list[Row]:
    """Rows (a) to (f) of the env mode (module docstring); figures go into ``report``
    (keys ``raw_env``, ``collection``, ``learning``, ``replay``)."""
    a, e, backend = cfg.actor.num_actors, cfg.env.envs_per_actor, cfg.env.backend
    say(f"(a) raw env, first half: {a} processes x {e} envs, {backend}, random actions, {seconds / 2:g} s")
    before = measure_collection_ceiling(cfg, spaces, seconds / 2, target=bare_env_stepper)
    # (b): epsilon 1 throughout, so the actors' actions are as random as (a)'s and no
    # warm-up is needed; inference still runs every step (the actor computes Q first).
    c = replace(cfg, **{"actor.epsilon_schedule": "linear", "actor.epsilon_start": 1.0, "actor.epsilon_end": 1.0,
                        "eval.eval_episodes": 1})
    say(f"(b) collection: run_local(collect_only=True), epsilon 1, >= {seconds:g} s")
    coll = measure_collection(c, spaces, seconds, before["sps"], work / "collect", warm_env_steps=0)
    say(f"(a) raw env, second half: {seconds / 2:g} s")
    after = measure_collection_ceiling(cfg, spaces, seconds / 2, target=bare_env_stepper)
    raw = (before["sps"] + after["sps"]) / 2
    net = _network_name(cfg, spaces)
    say(f"(a') raw env + {net} forward pass: {a} processes, epsilon 1, {seconds / 2:g} s")
    fwd = measure_collection_ceiling(c, spaces, seconds / 2, target=bare_collector)
    report["raw_env"] = {"sps": raw, "before": before, "after": after, "backend": backend,
                         "envpool_threads": cfg.env.envpool_threads if backend == "envpool" else None}
    report["raw_env_forward"] = fwd
    report["collection"] = {**coll, "ceiling_sps": raw, "env_forward_sps": fwd["sps"]}
    rows = [
        Row(f"(a) raw env: env steps/s, {a} procs x {e} envs, {backend}, random actions", raw, None,
            "(ceiling of b)"),
        Row(f"(a') raw env + {net} forward pass per step, bare loop (inference's cost)", fwd["sps"], raw, "(a)"),
        Row("(b) collection: actor env steps/s in training, learner idle, inference incl.", coll["sps"], raw,
            "(a)", (">=", ENV_COLLECTION_TARGET)),
        Row("(b) against (a'): what the actors, transport and learner process cost", coll["sps"], fwd["sps"],
            "(a')"),
    ]

    lc = replace(cfg, **{"eval.eval_episodes": 1})
    say(f"(c, d) bare update loop vs learner step, {seconds:g} s each")
    learn = measure_learning(lc, spaces, seconds, work / "learn")
    report["learning"] = learn
    rows += [
        Row(f"(c) bare update: updates/s, {net}, batch {learn['batch_size']}, {learn['device']}",
            learn["ceiling_ups"], None, "(ceiling of d)", fmt=",.1f"),
        Row(f"(d) learner: updates/s in training, replay {learn['replay_size']:,}", learn["ups"],
            learn["ceiling_ups"], "(c)", (">=", LEARNING_TARGET), fmt=",.1f"),
    ]

    spec = _replay_spec(cfg, spaces, replay_capacity, max(seconds / 2, 1.0))
    cap, why = _fit_capacity(spec)
    if cap != spec.capacity:
        spec = dc_replace(spec, capacity=cap)
    kind = "frame dedup" if spec.frame_dedup else "whole obs"
    say(f"(e, f) replay: fill {spec.capacity:,} transitions ({kind}) in a fresh process, then sample")
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        rep = pool.submit(measure_replay, spec).result()
    rep["reduced_because"] = why
    rep["requested_capacity"] = replay_capacity
    report["replay"] = rep
    if spec.frame_dedup:
        mem_ref, mem_ceiling, mem_target = "(one 84x84 frame)", float(FRAME_BYTES), ("<=", MEMORY_TARGET)
    else:
        mem_ref, mem_ceiling, mem_target = "(obs + next_obs + action, reward, discount, priority)", \
            float(rep["payload_bytes_per_transition"]), None
    cap_txt = f"{spec.capacity:,}"
    rows += [
        Row(f"(e) replay insert: transitions/s at {cap_txt} ({kind})", rep["insert_tps"], rep["insert_ceiling_tps"],
            "(bare numpy copy)"),
        Row(f"(e) replay sample({REPLAY_BATCH}) + update_priorities({REPLAY_BATCH}): calls/s at {cap_txt}",
            rep["sample_update_per_s"], rep["sample_ceiling_per_s"], "(bare numpy gather)", fmt=",.1f"),
        Row(f"(f) replay memory: bytes/transition at {cap_txt}", rep["bytes_per_transition"], mem_ceiling,
            mem_ref, mem_target),
    ]
    return rows


def _network_name(cfg: ExperimentConfig, spaces: EnvSpaces) -> str:
    from distdqn.agents.dqn.networks import network_kind

    kind, dueling = network_kind(cfg.network, spaces.obs_shape)
    return kind + (" dueling" if dueling else "")


def env_notes(cfg: ExperimentConfig, spaces: EnvSpaces, report: dict[str, Any]) -> list[str]:
    """The lines printed under the env-mode table."""
    m = report["machine"]
    raw, coll, learn, rep = report["raw_env"], report["collection"], report["learning"], report["replay"]
    threads = (f"; EnvPool worker threads per process: {raw['envpool_threads']} (env.envpool_threads)"
               if raw["backend"] == "envpool" else "")
    if coll["steady_state"]:
        how = f"steady state from metrics.csv over {coll['steady_state']['window_s']:.1f} s"
    else:
        how = "summary sps, start-up included (too few metrics rows for a steady-state window)"
    notes = [
        f"machine: {m['cpus']} CPUs, torch {m['torch']}, learner device {m['learner_device']}; torch threads: "
        f"actors 1, learner and both (c)/(d) loops {cfg.learner.torch_threads}{threads}.",
        f"(a) mean of {raw['before']['sps']:,.0f} (before b) and {raw['after']['sps']:,.0f} (after b); "
        f"per process {', '.join(f'{x:,.0f}' for x in raw['before']['per_process_sps'])} (before).",
        f"(b) {how}; epsilon 1 so the actions are as random as (a)'s; the actors still run the "
        f"{_network_name(cfg, spaces)} forward pass for every step.",
        f"(d) replay filled with {learn['replay_size']:,} "
        f"{'compact frame chunks (frame dedup)' if rep['frame_dedup'] else 'random transitions'}; "
        "(c) and (d) alternate in 3 rounds.",
        f"(e, f) in a fresh process: {rep['inserted']:,} transitions from {cfg.actor.num_actors} synthetic actors x "
        f"{cfg.env.envs_per_actor} envs (chunks of {cfg.actor.chunk_size}, n={cfg.actor.n_step}"
        + (f", mean episode 800 steps, {rep['frames_stored']:,} frames, frame ring {rep['frame_capacity']:,}"
           if rep["frame_dedup"] else "")
        + f"); insert {rep['insert_s']:.1f} s of {rep['fill_wall_s']:.1f} s fill; memory = RSS growth "
        f"{rep['rss_growth_bytes'] / 1e9:.2f} GB / capacity.",
    ]
    if rep.get("reduced_because"):
        notes.append(f"(e, f) {rep['reduced_because']}; bytes/transition is per stored transition at that "
                     "capacity (the frame ring and arrays scale linearly), not measured at "
                     f"{rep['requested_capacity']:,}.")
    return notes
