"""The learner-side loop body shared by every runtime.

:class:`Coordinator` owns the replay, the learner, the parameter server, the evaluator,
the metrics and the checkpoints, and keeps the run's counters and its transition
accounting (``produced = inserted + rejected + dropped``). Runtimes differ only in how
chunks reach :meth:`Coordinator.ingest` and how parameters reach the actors.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from distdqn.checkpoint import load_latest, save_checkpoint
from distdqn.config import ExperimentConfig, to_dict
from distdqn.core import TransitionChunk, finite_mask
from distdqn.envs import EnvSpaces
from distdqn.exploration import linear_epsilon
from distdqn.metrics import MetricsLogger
from distdqn.program import build_evaluator, build_parameter_server, build_replay
from distdqn.runtime.updaters import make_updater

log = logging.getLogger(__name__)


class StopRequest:
    """Whether and why a multi-process run should stop: set by the loop (:meth:`set`) or by
    SIGINT/SIGTERM while :meth:`install` is in effect (a second SIGINT raises
    ``KeyboardInterrupt`` to stop at once). :meth:`restore` puts the old handlers back."""

    def __init__(self) -> None:
        self.flag = False
        self.reason: str | None = None
        self._old: tuple[Any, Any] | None = None

    def set(self, reason: str) -> None:
        self.flag, self.reason = True, reason

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.set(signal.Signals(signum).name)

    def install(self) -> None:
        self._old = (signal.signal(signal.SIGINT, self._on_signal), signal.signal(signal.SIGTERM, self._on_signal))

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old[0])
            signal.signal(signal.SIGTERM, self._old[1])
            self._old = None


class RunAborted(RuntimeError):
    """The run cannot go on (a lost synchronous learner, actors in a crash loop); the message
    says why. The runtime still writes a final checkpoint and ``summary.json``."""


@dataclass
class Counters:
    """Run counters, checkpointed and restored on resume."""

    env_steps: int = 0
    produced: int = 0
    inserted: int = 0
    rejected: int = 0
    dropped: int = 0
    episodes: int = 0
    actor_restarts: int = 0
    learner_restarts: int = 0
    replay_restarts: int = 0
    parameter_server_restarts: int = 0
    env_restarts: int = 0
    next_eval_at: int = 0
    evals: int = 0
    wall_time: float = 0.0
    """Seconds of training across all sessions of this run (resumes add up)."""
    solved_at_env_steps: int = -1
    solved_at_wall_time: float = -1.0
    last_eval_return: float = float("nan")
    last_eval_returns: list[float] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RemoteParts:
    """Stand-ins for roles that live in other processes (the Ray runtime): objects with the
    replay's, parameter server's and updater's methods that the coordinator calls
    (``len``/``samples``/``inserted``/``beta``/``state_dict``; ``version``/``get_params``/
    ``state_dict``; ``updates``/``params``/``state_dict``)."""

    replay: Any
    ps: Any
    updater: Any


@dataclass
class IngestStats:
    """Bookkeeping of the chunks that reached a replay, to be added to the run's counters
    (:meth:`Coordinator.account`). ``produced = inserted + rejected + dropped``."""

    produced: int = 0
    inserted: int = 0
    rejected: int = 0
    dropped: int = 0
    env_steps: int = 0
    env_restarts: int = 0
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    param_versions: list[int] = field(default_factory=list)

    def add(self, chunk: TransitionChunk, inserted: int, rejected: int, dropped: int = 0) -> None:
        """Count one chunk whose transitions were inserted, rejected (non-finite) or dropped."""
        self.produced += len(chunk)
        self.inserted += inserted
        self.rejected += rejected
        self.dropped += dropped
        self.env_steps += chunk.env_steps
        self.env_restarts += chunk.env_restarts
        self.episode_returns.extend(float(r) for r in chunk.episode_returns)
        self.episode_lengths.extend(int(n) for n in chunk.episode_lengths)
        if chunk.param_version >= 0:
            self.param_versions.append(int(chunk.param_version))


def ingest_chunk(replay: Any, chunk: TransitionChunk) -> tuple[int, int]:
    """Refuse a chunk's non-finite transitions and insert the rest into ``replay``.

    Returns ``(inserted, rejected)`` transition counts. A compact (frame-deduplicated)
    chunk's frames are inserted even when none of its transitions survived: later
    transitions of the same episode refer to them.
    """
    n = len(chunk)
    bad = 0
    if n:
        ok = finite_mask(chunk)
        bad = int(n - ok.sum())
        if bad:
            log.debug("actor %d: rejected %d non-finite transitions", chunk.actor_id, bad)
            chunk = chunk.select(ok)  # a compact chunk keeps all its frames
    if len(chunk) or chunk.frames is not None:
        replay.insert(chunk)
    return len(chunk), bad


class Coordinator:
    """Replay + learner + parameter server + evaluator + bookkeeping, in one process.

    Args:
        cfg: validated experiment config.
        spaces: env spaces.
        run_dir: the run directory (created by the caller).
        deterministic: serial runtime; keep wall-clock columns out of ``metrics.csv``.
        resume: continue from the newest complete checkpoint in ``run_dir``.
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, run_dir: Path, deterministic: bool, resume: bool,
                 in_process_learners: bool = True, parts: RemoteParts | None = None):
        self.cfg, self.spaces, self.run_dir = cfg, spaces, Path(run_dir)
        self.deterministic = deterministic
        torch.set_num_threads(cfg.learner.torch_threads)
        if parts is not None:  # roles living elsewhere (Ray), reached through proxies
            self.replay, self.ps, self.updater = parts.replay, parts.ps, parts.updater
        else:
            self.replay = build_replay(cfg, spaces)
            self.ps = build_parameter_server(cfg, spaces)
            # None when the learners run in their own processes (the runtime steps them).
            self.updater = make_updater(cfg, spaces, self.ps) if in_process_learners else None
        self.remote_updates = 0
        self.learn_metrics: dict[str, float] = {}
        # learner processes: replies per rank and their latest metrics (TensorBoard: learner<k>/...)
        self._per_learner: dict[int, dict[str, float]] = {}
        self._per_learner_last: dict[int, int] = {}
        self.evaluator = build_evaluator(cfg, spaces)
        self.c = Counters(next_eval_at=cfg.eval.eval_period if cfg.eval.eval_period > 0 else cfg.total_env_steps)
        self.restored_extra: dict[str, Any] | None = None
        self.resumed_from: Path | None = None
        if resume:
            found = load_latest(self.run_dir)
            if found is None:
                raise FileNotFoundError(f"--resume: no usable checkpoint under {self.run_dir / 'checkpoints'}")
            self.resumed_from, state = found
            self._restore(state)
            log.info("resumed from %s at env_steps=%d updates=%d", self.resumed_from, self.c.env_steps, self.updates)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        self.metrics = MetricsLogger(self.run_dir, cfg.total_env_steps, deterministic=deterministic,
                                     progress=cfg.progress, append=resume)
        self._recent_returns: deque[float] = deque(maxlen=20)
        self._recent_lengths: deque[int] = deque(maxlen=20)
        self._param_lag: deque[int] = deque(maxlen=100)
        self._session_start = time.perf_counter()
        self._wall_at_start = self.c.wall_time
        self._last_log = (self._session_start, self.c.env_steps, self.updates)
        self._last_ckpt_updates = self.updates
        self.stop_reason: str | None = None
        self.summary_extra: dict[str, Any] = {}
        """Runtime-specific figures added to ``summary.json`` (e.g. Ray's start-up time)."""

    # ------------------------------------------------------------------ data in

    def can_insert(self, n: int) -> bool:
        return self.replay.can_insert(n)

    def ingest(self, chunk: TransitionChunk) -> None:
        """Account for a chunk, refuse non-finite transitions, insert the rest."""
        stats = IngestStats()
        stats.add(chunk, *ingest_chunk(self.replay, chunk))
        self.account(stats)

    def account(self, s: IngestStats) -> None:
        """Add chunk bookkeeping done here or elsewhere (a Ray replay shard) to the run's counters."""
        self.c.produced += s.produced
        self.c.inserted += s.inserted
        self.c.rejected += s.rejected
        self.c.dropped += s.dropped
        self.c.env_steps += s.env_steps
        self.c.env_restarts += s.env_restarts
        self.c.episodes += len(s.episode_returns)
        self._recent_returns.extend(s.episode_returns)
        self._recent_lengths.extend(s.episode_lengths)
        self._param_lag.extend(self.ps.version - v for v in s.param_versions)

    def drop(self, n: int) -> None:
        """Count transitions that were produced but never inserted (e.g. left in a queue at shutdown)."""
        self.c.produced += n
        self.c.dropped += n

    # ------------------------------------------------------------------ learning

    @property
    def updates(self) -> int:
        """Optimizer steps: the in-process updater's, or those reported by learner processes."""
        return self.updater.updates if self.updater is not None else self.remote_updates

    def can_learn(self) -> bool:
        assert self.updater is not None
        return self.updater.can_step(self.replay)

    def learn_step(self) -> bool:
        """One unit of learning (sample -> learn -> priority update) by the topology's updater.
        Returns True when the parameter server got new parameters."""
        assert self.updater is not None
        published = self.updater.step(self.replay)
        self.learn_metrics = self.updater.metrics
        return published

    def note_learner_reply(self, rank: int, metrics: dict[str, float]) -> None:
        """Record one learner process's reply (per-learner metrics)."""
        entry = self._per_learner.setdefault(rank, {"replies": 0})
        entry["replies"] += 1
        entry.update(metrics)

    def current_params(self) -> np.ndarray:
        """The newest parameters (the in-process learner's, else the parameter server's)."""
        if self.updater is not None:
            return self.updater.params()
        return self.ps.get_params()[1]

    # ------------------------------------------------------------------ evaluation

    def eval_due(self) -> bool:
        return self.c.env_steps >= self.c.next_eval_at

    def evaluate(self) -> bool:
        """Greedy evaluation with the newest learner parameters; True when the target return
        is reached (the run should stop)."""
        self.begin_evaluation()
        returns = self.evaluator.evaluate(self.current_params(), self.cfg.eval.eval_episodes)
        return self.record_evaluation(returns, self.c.env_steps)

    def begin_evaluation(self) -> int:
        """Schedule the next evaluation; returns this evaluation's index (which seeds its
        episodes, see :class:`~distdqn.roles.evaluator.Evaluator`)."""
        period = self.cfg.eval.eval_period
        while self.c.next_eval_at <= self.c.env_steps:
            self.c.next_eval_at += period if period > 0 else self.cfg.total_env_steps
        return self.evaluator.evaluations

    def record_evaluation(self, returns: np.ndarray, env_steps: int) -> bool:
        """Record the returns of an evaluation of the parameters taken at ``env_steps``
        (solved-at counts those env steps and the wall time now); True when the target
        return is reached."""
        self.c.evals += 1
        self.c.last_eval_returns = [float(x) for x in returns]
        self.c.last_eval_return = float(np.mean(returns))
        target = self.cfg.eval.target_return
        solved = target is not None and self.c.last_eval_return >= target
        if solved and self.c.solved_at_env_steps < 0:
            self.c.solved_at_env_steps = env_steps
            self.c.solved_at_wall_time = self.wall_time()
        self.log_row(force=True)
        return solved

    # ------------------------------------------------------------------ bookkeeping

    def wall_time(self) -> float:
        return self._wall_at_start + (time.perf_counter() - self._session_start)

    def epsilon(self) -> float:
        a = self.cfg.actor
        if a.epsilon_schedule == "apex":
            return a.apex_epsilon
        return linear_epsilon(self.c.env_steps, a.epsilon_start, a.epsilon_end, a.epsilon_decay_steps)

    def row(self) -> dict[str, Any]:
        now = time.perf_counter()
        t0, s0, u0 = self._last_log
        dt = max(now - t0, 1e-9)
        row: dict[str, Any] = {
            "env_steps": self.c.env_steps,
            "env_frames": self.c.env_steps * (self.cfg.env.frame_skip if _is_atari(self.cfg.env.id) else 1),
            "updates": self.updates,
            "wall_time": round(self.wall_time(), 3),
            # rates over the interval since the last row (none for back-to-back rows)
            "sps": (self.c.env_steps - s0) / dt if dt >= 0.2 else None,
            "ups": (self.updates - u0) / dt if dt >= 0.2 else None,
            "episode_return": float(np.mean(self._recent_returns)) if self._recent_returns else None,
            "episode_length": float(np.mean(self._recent_lengths)) if self._recent_lengths else None,
            "episodes": self.c.episodes,
            "eval_return": None if math.isnan(self.c.last_eval_return) else self.c.last_eval_return,
            "epsilon": self.epsilon(),
            "replay_size": len(self.replay),
            "replay_bytes": self.replay.nbytes,
            "samples_per_insert": self.replay.samples / max(self.replay.inserted, 1),
            "param_version": self.ps.version,
            "param_lag": float(np.mean(self._param_lag)) if self._param_lag else None,
            "beta": self.replay.beta,
            "actor_restarts": self.c.actor_restarts,
            "learner_restarts": self.c.learner_restarts,
            "replay_restarts": self.c.replay_restarts,
            "parameter_server_restarts": self.c.parameter_server_restarts,
            "env_restarts": self.c.env_restarts,
            "produced": self.c.produced,
            "inserted": self.c.inserted,
            "rejected": self.c.rejected,
            "dropped": self.c.dropped,
        }
        row.update(self.learn_metrics)
        for rank, entry in self._per_learner.items():
            done = int(entry["replies"])
            if dt >= 0.2:
                row[f"learner{rank}/ups"] = (done - self._per_learner_last.get(rank, 0)) / dt
                self._per_learner_last[rank] = done
            for key in ("td_loss", "grad_norm", "q_mean"):
                if key in entry:
                    row[f"learner{rank}/{key}"] = entry[key]
        if self.ps.gradient_mode:
            stal = self.ps.pop_staleness()
            row["staleness"] = float(np.mean(stal)) if stal else None
            row["dropped_stale_gradients"] = self.ps.dropped_stale_gradients
        if dt >= 0.2:
            self._last_log = (now, self.c.env_steps, self.updates)
        return row

    def log_row(self, force: bool = False) -> None:
        self.metrics.log(self.row())

    def log_due(self) -> bool:
        return time.perf_counter() - self._last_log[0] >= self.cfg.log_period

    def checkpoint_due(self) -> bool:
        p = self.cfg.checkpoint_period
        return p > 0 and self.updates - self._last_ckpt_updates >= p

    def checkpoint(self, extra: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint of everything this process owns plus ``extra`` (e.g. actor states)."""
        self.c.wall_time = self.wall_time()
        self._wall_at_start, self._session_start = self.c.wall_time, time.perf_counter()
        state: dict[str, Any] = {
            "updater": self.updater.state_dict() if self.updater is not None else {},
            "remote_updates": self.remote_updates,
            "params": torch.from_numpy(self.current_params().copy()),  # newest, for `distdqn eval`
            "parameter_server": self.ps.state_dict(),
            "counters": self.c.state(),
            "torch_rng": torch.random.get_rng_state(),
            "evaluator_evaluations": self.evaluator.evaluations,
            "extra": extra or {},
        }
        if self.cfg.checkpoint_replay:
            state["replay"] = self.replay.state_dict()
        path = save_checkpoint(self.run_dir, self.c.env_steps, self.updates, state, self.cfg.keep_checkpoints)
        self._last_ckpt_updates = self.updates
        return path

    def _restore(self, state: dict[str, Any]) -> None:
        if self.updater is not None and state["updater"]:
            self.updater.load_state_dict(state["updater"])
        self.remote_updates = int(state["remote_updates"])
        self.ps.load_state_dict(state["parameter_server"])
        for k, v in state["counters"].items():
            setattr(self.c, k, v)
        torch.random.set_rng_state(state["torch_rng"])
        self.evaluator.evaluations = int(state["evaluator_evaluations"])
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])
        self.restored_extra = state.get("extra") or {}

    def tick(self, checkpoint_extra: Callable[[], dict[str, Any]] | None = None,
             eval_runner: Any = None) -> str | None:
        """The end-of-pass duties of the multi-process runtimes: the env-step budget, a due
        evaluation (stopping at the target return), a due metrics row, a due checkpoint
        (with ``checkpoint_extra()``). Returns why the run should stop, or None.

        ``eval_runner`` (local runtime): evaluations run there (``submit(index, params,
        episodes, env_steps)``, ``busy``, ``poll() -> (returns, env_steps) | None``) while
        learning goes on; None: in line."""
        if eval_runner is not None:
            done = eval_runner.poll()
            if done is not None and self.record_evaluation(*done):
                return "target_return"
        if self.c.env_steps >= self.cfg.total_env_steps:
            return "total_env_steps"
        if self.eval_due():
            if eval_runner is None:
                if self.evaluate():
                    return "target_return"
            elif not eval_runner.busy:
                k = self.begin_evaluation()
                self.evaluator.evaluations = k + 1  # the runner's evaluator uses index k
                eval_runner.submit(k, self.current_params(), self.cfg.eval.eval_episodes, self.c.env_steps)
        if self.log_due():
            self.log_row()
        if self.checkpoint_due():
            self.checkpoint(checkpoint_extra() if checkpoint_extra is not None else None)
        return None

    # ------------------------------------------------------------------ end

    def summary(self) -> dict[str, Any]:
        wall = self.wall_time()
        c = self.c
        return {
            "env_id": self.cfg.env.id,
            "preset": self.cfg.preset,
            "runtime": self.cfg.runtime,
            "seed": self.cfg.seed,
            "stop_reason": self.stop_reason,
            "final_eval_return": None if math.isnan(c.last_eval_return) else c.last_eval_return,
            "final_eval_returns": c.last_eval_returns,
            "eval_episodes": len(c.last_eval_returns),
            "solved": c.solved_at_env_steps >= 0,
            "solved_at_env_steps": c.solved_at_env_steps if c.solved_at_env_steps >= 0 else None,
            "solved_at_wall_time_s": c.solved_at_wall_time if c.solved_at_wall_time >= 0 else None,
            "env_steps": c.env_steps,
            "updates": self.updates,
            "wall_time_s": round(wall, 3),
            "sps": c.env_steps / max(wall, 1e-9),
            "ups": self.updates / max(wall, 1e-9),
            "episodes": c.episodes,
            "replay_size": len(self.replay),
            "replay_bytes": self.replay.nbytes,
            "replay_bytes_per_transition": self.replay.nbytes / max(len(self.replay), 1),
            "produced": c.produced,
            "inserted": c.inserted,
            "rejected": c.rejected,
            "dropped": c.dropped,
            "accounting_ok": c.produced == c.inserted + c.rejected + c.dropped,
            "actor_restarts": c.actor_restarts,
            "learner_restarts": c.learner_restarts,
            "replay_restarts": c.replay_restarts,
            "parameter_server_restarts": c.parameter_server_restarts,
            "env_restarts": c.env_restarts,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "learners": self.cfg.learner.num_learners,
            "staleness_mean": self.ps.staleness_mean() if self.ps.gradient_mode else None,
            "dropped_stale_gradients": self.ps.dropped_stale_gradients if self.ps.gradient_mode else None,
            **self.summary_extra,
        }

    def finish(self) -> dict[str, Any]:
        """Final log row, close metrics, write ``summary.json``; returns the summary."""
        self.log_row(force=True)
        self.metrics.close()
        self.evaluator.close()
        s = self.summary()
        (self.run_dir / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
        return s


def _is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/") or "NoFrameskip" in env_id
