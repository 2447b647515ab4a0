"""What a run reports: one metrics row (``metrics.csv``, TensorBoard) and ``summary.json``,
from the ledger, the learner side's gauges and the learners' metrics."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from distdqn.config import ExperimentConfig
from distdqn.envs import is_atari
from distdqn.runtime.ledger import Ledger


class Report:
    """Builds metrics rows (rates over the interval since the previous row) and the summary.

    Args:
        cfg: the experiment.
        ledger: counters and recent figures.
        parts: the learner side (``replay`` gauges: ``len``, ``nbytes``, ``samples``,
            ``inserted``, ``beta``; ``ps``: ``version``, ``gradient_mode``, staleness).
        updates: the run's optimizer steps now.
        wall_time: seconds of training so far.
    """

    def __init__(self, cfg: ExperimentConfig, ledger: Ledger, parts: Any, updates: Callable[[], int],
                 wall_time: Callable[[], float]):
        self.cfg, self.ledger, self.parts, self.updates, self.wall_time = cfg, ledger, parts, updates, wall_time
        self.learn_metrics: dict[str, float] = {}
        self.per_learner: dict[int, dict[str, float]] = {}
        """Learner processes: replies per rank and their latest metrics (TensorBoard: learner<k>/...)."""
        self._per_learner_last: dict[int, int] = {}
        self._last = (time.perf_counter(), ledger.c.env_steps, updates())

    def note_learner(self, rank: int, metrics: dict[str, float], replies: int | None = None) -> None:
        """Record a learner's reply (``replies``: its total, else one more)."""
        entry = self.per_learner.setdefault(rank, {"replies": 0})
        entry["replies"] = entry["replies"] + 1 if replies is None else replies
        entry.update(metrics)

    @property
    def last_row_time(self) -> float:
        """When the rates were last taken (``perf_counter``)."""
        return self._last[0]

    def row(self) -> dict[str, Any]:
        now = time.perf_counter()
        t0, s0, u0 = self._last
        dt = max(now - t0, 1e-9)
        c, led, replay, ps = self.ledger.c, self.ledger, self.parts.replay, self.parts.ps
        updates = self.updates()
        row: dict[str, Any] = {
            "env_steps": c.env_steps,
            "env_frames": c.env_steps * (self.cfg.env.frame_skip if is_atari(self.cfg.env.id) else 1),
            "updates": updates,
            "wall_time": round(self.wall_time(), 3),
            # rates over the interval since the last row (none for back-to-back rows)
            "sps": (c.env_steps - s0) / dt if dt >= 0.2 else None,
            "ups": (updates - u0) / dt if dt >= 0.2 else None,
            "episode_return": float(np.mean(led.recent_returns)) if led.recent_returns else None,
            "episode_length": float(np.mean(led.recent_lengths)) if led.recent_lengths else None,
            "episodes": c.episodes,
            "eval_return": None if math.isnan(c.last_eval_return) else c.last_eval_return,
            "epsilon": led.epsilon(),
            "replay_size": len(replay),
            "replay_bytes": replay.nbytes,
            "samples_per_insert": replay.samples / max(replay.inserted, 1),
            "param_version": ps.version,
            "param_lag": float(np.mean(led.param_lag)) if led.param_lag else None,
            "beta": replay.beta,
            "actor_restarts": c.actor_restarts,
            "learner_restarts": c.learner_restarts,
            "replay_restarts": c.replay_restarts,
            "parameter_server_restarts": c.parameter_server_restarts,
            "env_restarts": c.env_restarts,
            "produced": c.produced,
            "inserted": c.inserted,
            "rejected": c.rejected,
            "dropped": c.dropped,
        }
        row.update(self.learn_metrics)
        row.update(led.stats)
        for rank, entry in self.per_learner.items():
            done = int(entry["replies"])
            if dt >= 0.2:
                row[f"learner{rank}/ups"] = (done - self._per_learner_last.get(rank, 0)) / dt
                self._per_learner_last[rank] = done
            for key in ("td_loss", "grad_norm", "q_mean"):
                if key in entry:
                    row[f"learner{rank}/{key}"] = entry[key]
        if ps.gradient_mode:
            stal = ps.pop_staleness()
            row["staleness"] = float(np.mean(stal)) if stal else None
            row["dropped_stale_gradients"] = ps.dropped_stale_gradients
        if dt >= 0.2:
            self._last = (now, c.env_steps, updates)
        return row

    def summary(self, stop_reason: str | None, resumed_from: Any, extra: dict[str, Any]) -> dict[str, Any]:
        wall = self.wall_time()
        c, replay, ps = self.ledger.c, self.parts.replay, self.parts.ps
        updates = self.updates()
        return {
            "env_id": self.cfg.env.id,
            "preset": self.cfg.preset,
            "agent": self.cfg.agent,
            "topology": self.cfg.topology,
            "runtime": self.cfg.runtime,
            "seed": self.cfg.seed,
            "stop_reason": stop_reason,
            "final_eval_return": None if math.isnan(c.last_eval_return) else c.last_eval_return,
            "final_eval_returns": c.last_eval_returns,
            "eval_episodes": len(c.last_eval_returns),
            "evals": c.evals,
            "solved": c.solved_at_env_steps >= 0,
            "solved_at_env_steps": c.solved_at_env_steps if c.solved_at_env_steps >= 0 else None,
            "solved_at_wall_time_s": c.solved_at_wall_time if c.solved_at_wall_time >= 0 else None,
            "env_steps": c.env_steps,
            "updates": updates,
            "wall_time_s": round(wall, 3),
            "sps": c.env_steps / max(wall, 1e-9),
            "ups": updates / max(wall, 1e-9),
            "episodes": c.episodes,
            "replay_size": len(replay),
            "replay_bytes": replay.nbytes,
            "replay_bytes_per_transition": replay.nbytes / max(len(replay), 1),
            "produced": c.produced,
            "inserted": c.inserted,
            "rejected": c.rejected,
            "dropped": c.dropped,
            "accounting_ok": c.accounting_ok,
            "actor_restarts": c.actor_restarts,
            "learner_restarts": c.learner_restarts,
            "replay_restarts": c.replay_restarts,
            "parameter_server_restarts": c.parameter_server_restarts,
            "env_restarts": c.env_restarts,
            "checkpoint_failures": c.checkpoint_failures,
            "resumed_from": str(resumed_from) if resumed_from else None,
            "learners": self.cfg.learner.num_learners,
            "staleness_mean": ps.staleness_mean() if ps.gradient_mode else None,
            "dropped_stale_gradients": ps.dropped_stale_gradients if ps.gradient_mode else None,
            **extra,
        }
