"""The one driver loop and its one shutdown tail, shared by every runtime.

A runtime (:mod:`~distdqn.runtime.serial`, :mod:`~distdqn.runtime.local`,
:mod:`~distdqn.runtime.ray`) places the roles and moves data; the :class:`Driver` runs the
run around it: each pass it asks the runtime to move data and learn (``pump``), to
supervise its processes, then does the run's duties (a due checkpoint, metrics row and
evaluation, the env-step budget, the target return). When the run ends (budget, target,
signal or error) the tail is the same everywhere: the runtime stops its roles, then a final
checkpoint, a final evaluation (unless the target was reached or the run failed) and
``summary.json``.

The driver's state lives in parts, none owning everything: the :class:`~distdqn.runtime.ledger.Ledger`
(counters, accounting), the :class:`~distdqn.runtime.evaluation.Evaluation` (schedule,
evaluator), the :class:`~distdqn.runtime.report.Report` (rows, summary), the
:class:`~distdqn.io.metrics.MetricsLogger`, and the runtime's learner side
(:class:`Parts`: replay, parameter server, the topology's updater). The checkpoint format
is :meth:`Driver.checkpoint`.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml

from distdqn.config import ExperimentConfig, to_dict
from distdqn.core import NonFiniteLossError
from distdqn.envs import EnvSpaces
from distdqn.io.checkpoint import complete_checkpoints, load_latest, save_checkpoint
from distdqn.io.metrics import MetricsLogger
from distdqn.program import metric_columns
from distdqn.runtime.evaluation import EvalOutcome, EvalRunner, Evaluation
from distdqn.runtime.ledger import Counters, Ledger
from distdqn.runtime.report import Report

log = logging.getLogger(__name__)


class StopRequest:
    """Whether and why a run should stop: set by the loop (:meth:`set`) or by SIGINT/SIGTERM
    while :meth:`install` is in effect (a second SIGINT raises ``KeyboardInterrupt`` to stop
    at once). :meth:`restore` puts the old handlers back."""

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
    says why. The driver still writes a final checkpoint and ``summary.json``."""


@dataclass
class Parts:
    """The learner side as the driver sees it: the replay (gauges, checkpoint state), the
    parameter server, and the topology's updater when the learners live in the driver's
    process (else None: the runtime reports ``updates``). Objects that live elsewhere (Ray)
    are stand-ins with the same methods."""

    replay: Any
    ps: Any
    updater: Any | None


class Runtime(Protocol):
    """What a runtime gives the driver (see the module docstring)."""

    parts: Parts
    deterministic: bool
    """Serial: metrics rows by env steps and no wall-clock columns (the same seed gives the
    same ``metrics.csv``)."""
    tail_errors: tuple[type[BaseException], ...]
    """Errors of a lost remote role that the tail's checkpoint and evaluation survive."""
    transient_errors: tuple[type[BaseException], ...]
    """Errors of a role being restarted: a checkpoint that meets one is postponed."""

    def start(self, driver: Driver) -> None: ...

    def pump(self) -> bool:
        """Move data and learn as far as the rate limiter allows; True when anything moved."""
        ...

    def supervise(self) -> None:
        """Restart what died (counted in the driver's counters); raise RunAborted when it cannot."""
        ...

    def idle(self) -> None:
        """Wait a little: nothing moved in the last pass."""
        ...

    def eval_runner(self) -> EvalRunner | None:
        """Where evaluations run while learning goes on, or None (in line)."""
        ...

    def current_params(self) -> np.ndarray: ...

    def checkpoint_extra(self) -> dict[str, Any]: ...

    def restore_extra(self, extra: dict[str, Any]) -> None: ...

    def stop(self, graceful: bool = True) -> None:
        """Stop every role; what was in flight is accounted: inserted into the replay past
        the rate limiter when ``graceful``, else counted as dropped."""
        ...

    def close(self) -> None:
        """Release what is left (after the summary)."""
        ...

    def build(self) -> None:
        """Build the learner side (``parts``); before the driver restores a checkpoint into it."""
        ...

    def abort(self) -> None:
        """The learner side or the driver could not be built: release what was started."""
        ...


class Driver:
    """Runs a run: the loop, its duties and the shutdown tail (module docstring).

    Args:
        cfg, spaces: the experiment.
        run_dir: the run directory (created by the caller).
        runtime: the runtime, its learner side built (``runtime.parts``).
        resume: continue from the newest complete checkpoint in ``run_dir``.

    Raises:
        FileNotFoundError: ``resume`` without a usable checkpoint.
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, run_dir: Path, runtime: Runtime, resume: bool):
        self.cfg, self.spaces, self.run_dir, self.runtime = cfg, spaces, Path(run_dir), runtime
        self.parts = runtime.parts
        torch.set_num_threads(cfg.learner.torch_threads)
        period = cfg.eval.eval_period
        self.ledger = Ledger(Counters(next_eval_at=period if period > 0 else cfg.total_env_steps))
        self.c = self.ledger.c
        self.remote_updates = 0
        """Optimizer steps reported by learners that live elsewhere (no in-process updater)."""
        self._session_start = time.perf_counter()
        self._wall_at_start = 0.0
        self.evaluation = Evaluation(cfg, spaces, self.c, self.wall_time)
        self.resumed_from: Path | None = None
        if resume:
            found = load_latest(self.run_dir)
            if found is None:
                raise FileNotFoundError(f"--resume: no usable checkpoint under {self.run_dir / 'checkpoints'}")
            self.resumed_from, state = found
            self._restore(state)
            log.info("resumed from %s at env_steps=%d updates=%d", self.resumed_from, self.c.env_steps, self.updates)
        self._session_start = time.perf_counter()
        self._wall_at_start = self.c.wall_time
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        self.metrics = MetricsLogger(self.run_dir, cfg.total_env_steps, deterministic=runtime.deterministic,
                                     progress=cfg.progress, append=resume,
                                     extra_columns=metric_columns(cfg, spaces))
        self.report = Report(cfg, self.ledger, self.parts, lambda: self.updates, self.wall_time)
        self._last_ckpt_updates = self.updates
        self._next_log = (self.c.env_steps // cfg.serial_log_steps + 1) * cfg.serial_log_steps
        self.stop_reason: str | None = None
        self.summary_extra: dict[str, Any] = {}
        """Runtime-specific figures added to ``summary.json`` (e.g. Ray's start-up time)."""

    # ------------------------------------------------------------------ state

    @property
    def updates(self) -> int:
        """Optimizer steps: the in-process updater's, or those reported by the learners."""
        u = self.parts.updater
        return u.updates if u is not None else self.remote_updates

    def wall_time(self) -> float:
        return self._wall_at_start + (time.perf_counter() - self._session_start)

    def budget_reached(self) -> bool:
        return self.c.env_steps >= self.cfg.total_env_steps

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        """Train until the budget, the target return, a signal or an error; then the tail.
        Returns the summary (also written to ``summary.json``).

        Raises:
            NonFiniteLossError, RunAborted: after the tail wrote the final checkpoint and summary.
        """
        stop = StopRequest()
        stop.install()
        error: BaseException | None = None
        graceful = False  # an unexpected error or a second Ctrl-C: what is in flight is dropped
        rt = self.runtime
        try:
            rt.start(self)
            while not stop.flag:
                if self.budget_reached():
                    stop.set("total_env_steps")
                    break
                progressed = rt.pump()
                rt.supervise()
                reason = self.duties()
                if reason is not None:
                    stop.set(reason)
                    break
                if not progressed:
                    rt.idle()
            graceful = True
        except (NonFiniteLossError, RunAborted) as exc:
            error, stop.reason = exc, f"error: {exc}"
            graceful = True  # the experience in flight is still good: kept for a resume
        except KeyboardInterrupt:
            stop.reason = "interrupted"
        finally:
            stop.restore()
            runner = rt.eval_runner()
            if runner is not None:
                runner.close()
            rt.stop(graceful)
        self.stop_reason = stop.reason
        self.finish_run(final_eval=error is None and self.stop_reason != "target_return")
        summary = self.finish()
        rt.close()
        if error is not None:
            raise error
        return summary

    def duties(self) -> str | None:
        """A due checkpoint, metrics row and evaluation; returns why the run should stop, or None."""
        runner = self.runtime.eval_runner()
        if runner is not None and not runner.alive:
            runner = None
        if runner is not None:
            done = runner.poll()
            if done is not None and self.record_evaluation(done):
                return "target_return"
        if self.checkpoint_due():
            try:
                self.checkpoint()
            except self.runtime.transient_errors as exc:  # a role is being restarted: on a later pass
                log.warning("checkpoint postponed: %s", type(exc).__name__)
            except OSError as exc:  # e.g. the disk is full: training goes on, the last good checkpoint stays
                self._checkpoint_failed(exc)
        if self.runtime.deterministic:
            if self.c.env_steps >= self._next_log:
                self.log_row()
                self._next_log = (self.c.env_steps // self.cfg.serial_log_steps + 1) * self.cfg.serial_log_steps
        elif time.perf_counter() - self.report.last_row_time >= self.cfg.log_period:
            self.log_row()
        if self.evaluation.due():
            if runner is None:
                if self.evaluate():
                    return "target_return"
            elif not runner.busy and not self.budget_reached():
                k = self.evaluation.begin()
                self.evaluation.evaluator.evaluations = k + 1  # the runner's evaluator uses index k
                runner.submit(k, self.runtime.current_params(), self.cfg.eval.eval_episodes, self.c.env_steps)
        return None

    def finish_run(self, final_eval: bool) -> None:
        """The tail's checkpoint and final evaluation (each allowed to fail with a warning when
        a remote role is gone)."""
        try:
            self.checkpoint()
        except OSError as exc:
            self._checkpoint_failed(exc)
        except self.runtime.tail_errors as exc:
            log.warning("final checkpoint failed: %s", exc)
        try:
            if final_eval and not self.evaluation.off:
                self.evaluate()
        except self.runtime.tail_errors as exc:
            log.warning("final evaluation failed: %s", exc)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> bool:
        """Greedy evaluation of the newest parameters, in line; True at the target return."""
        return self.record_evaluation(self.evaluation.in_line(self.runtime.current_params()))

    def record_evaluation(self, outcome: EvalOutcome) -> bool:
        solved = self.evaluation.record(outcome)
        self.log_row()
        return solved

    # ------------------------------------------------------------------ metrics

    def log_row(self) -> None:
        self.metrics.log(self.report.row())

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_due(self) -> bool:
        p = self.cfg.checkpoint_period
        return p > 0 and self.updates - self._last_ckpt_updates >= p

    def _checkpoint_failed(self, exc: OSError) -> None:
        """Count a checkpoint that could not be written and say which one is still good; the
        next try comes a ``checkpoint_period`` later."""
        self.c.checkpoint_failures += 1
        self._last_ckpt_updates = self.updates
        good = complete_checkpoints(self.run_dir)
        log.warning("checkpoint failed (%s%s); the last good checkpoint is %s; training goes on "
                    "(%d failed so far)", exc.strerror or exc, f": {exc.filename}" if exc.filename else "",
                    good[0] if good else "none yet", self.c.checkpoint_failures)

    def checkpoint(self) -> Path:
        """Write a checkpoint of the learner side, the counters and the runtime's extra state
        (serial: the actors')."""
        self.c.wall_time = self.wall_time()
        self._wall_at_start, self._session_start = self.c.wall_time, time.perf_counter()
        p = self.parts
        state: dict[str, Any] = {
            "updater": p.updater.state_dict() if p.updater is not None else {},
            "remote_updates": self.remote_updates,
            "params": torch.from_numpy(self.runtime.current_params().copy()),  # newest, for `distdqn eval`
            "parameter_server": p.ps.state_dict(),
            "counters": self.c.state(),
            "torch_rng": torch.random.get_rng_state(),
            "evaluator_evaluations": self.evaluation.evaluator.evaluations,
            "extra": self.runtime.checkpoint_extra(),
        }
        if self.cfg.checkpoint_replay:
            state["replay"] = p.replay.state_dict()
        path = save_checkpoint(self.run_dir, self.c.env_steps, self.updates, state, self.cfg.keep_checkpoints)
        self._last_ckpt_updates = self.updates
        return path

    def _restore(self, state: dict[str, Any]) -> None:
        p = self.parts
        if p.updater is not None and state["updater"]:
            p.updater.load_state_dict(state["updater"])
        self.remote_updates = int(state["remote_updates"])
        p.ps.load_state_dict(state["parameter_server"])
        for k, v in state["counters"].items():
            setattr(self.c, k, v)
        torch.random.set_rng_state(state["torch_rng"])
        self.evaluation.evaluator.evaluations = int(state["evaluator_evaluations"])
        if "replay" in state:
            p.replay.load_state_dict(state["replay"])
        self.runtime.restore_extra(state.get("extra") or {})

    # ------------------------------------------------------------------ end

    def finish(self) -> dict[str, Any]:
        """Final log row, close metrics, write ``summary.json``; returns the summary."""
        self.log_row()
        self.metrics.close()
        self.evaluation.close()
        s = self.report.summary(self.stop_reason, self.resumed_from, self.summary_extra)
        (self.run_dir / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
        return s


def drive(cfg: ExperimentConfig, spaces: EnvSpaces, run_dir: Path, runtime: Runtime, resume: bool) -> dict[str, Any]:
    """Build ``runtime``'s learner side and a :class:`Driver` for it, then run: every runtime's
    entry. Returns the summary.

    Raises:
        NonFiniteLossError, RunAborted: after the final checkpoint and summary.
        FileNotFoundError: ``resume`` without a usable checkpoint.
    """
    try:
        runtime.build()
        driver = Driver(cfg, spaces, run_dir, runtime, resume)
    except BaseException:
        runtime.abort()
        raise
    return driver.run()
