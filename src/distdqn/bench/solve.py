"""Row (d): time to solve CartPole-v1, distdqn against Stable-Baselines3 DQN."""

from __future__ import annotations

import math
import multiprocessing as mp
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from distdqn.bench.common import (
    SOLVE_BUDGET,
    SOLVE_ENV,
    SOLVE_EVAL_EPISODES,
    SOLVE_EVAL_PERIOD,
    SOLVE_TARGET_RETURN,
    SOLVE_WALL_TARGET,
    local_run,
)
from distdqn.bench.report import Row, say
from distdqn.config import ExperimentConfig, from_dict
from distdqn.program import spaces_for

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


def distdqn_time_to_solve(actors: int, seed: int, run_dir: Path, backend: str = "gymnasium") -> dict[str, Any]:
    """(d), distdqn: the default config on CartPole-v1 (``env.backend=backend``), stopped at
    the first evaluation whose mean return reaches the target. Wall time is from the call
    of ``run_local``."""
    cfg = from_dict({
        "env": {"id": SOLVE_ENV, "backend": backend}, "actor": {"num_actors": actors}, "seed": seed, "progress": False,
        "total_env_steps": SOLVE_BUDGET,
        "eval": {"eval_period": SOLVE_EVAL_PERIOD, "eval_episodes": SOLVE_EVAL_EPISODES,
                 "target_return": SOLVE_TARGET_RETURN},
    })
    spaces = spaces_for(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    s = local_run(cfg, spaces, run_dir)
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


def solve_notes(cfg: ExperimentConfig, report: dict[str, Any]) -> list[str]:
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


def solve_rows(seeds: list[int], actors: int, run_sb3: bool, sb3_threads: int | None, work: Path,
                report: dict[str, Any], label: str = "(d)", backend: str = "gymnasium") -> list[Row]:
    """Row (d) (``label``): distdqn (on ``backend``) and (optionally) SB3 per seed,
    interleaved; figures go into ``report``."""
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) if run_sb3 else None
    try:
        for seed in seeds:
            say(f"{label} time to solve {SOLVE_ENV}, seed {seed}: distdqn ({backend})")
            ours.append(distdqn_time_to_solve(actors, seed, work / f"solve-s{seed}", backend))
            if pool is not None:
                say(f"{label} time to solve {SOLVE_ENV}, seed {seed}: Stable-Baselines3 DQN")
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
