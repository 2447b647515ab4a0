"""When the run evaluates, and what came of it: the evaluation schedule, the target return,
and the in-line evaluator (the :class:`~distdqn.roles.evaluator.Evaluator` role)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np

from distdqn.config import ExperimentConfig
from distdqn.envs import EnvSpaces
from distdqn.program import build_evaluator
from distdqn.roles.evaluator import EvaluationFailed
from distdqn.runtime.ledger import Counters

log = logging.getLogger(__name__)

MAX_FAILED_EVALUATIONS = 3
"""Failed evaluations in a row (each :data:`~distdqn.roles.evaluator.MAX_ATTEMPTS` tries)
after which evaluation is turned off for the rest of the run; training goes on."""


class EvalOutcome(NamedTuple):
    """What one evaluation came to: ``returns`` (``[episodes]`` float64), or None and the
    ``error`` when it failed; ``env_steps`` when its parameters were taken; the evaluator's
    ``env_restarts`` during it."""

    returns: np.ndarray | None
    env_steps: int
    env_restarts: int = 0
    error: str | None = None


def run_evaluation(evaluator, params: np.ndarray, episodes: int, env_steps: int) -> EvalOutcome:
    """One evaluation by ``evaluator`` (an :class:`~distdqn.roles.evaluator.Evaluator`), its
    failure caught."""
    before = evaluator.env_restarts
    try:
        returns, error = evaluator.evaluate(params, episodes), None
    except EvaluationFailed as exc:
        returns, error = None, str(exc)
    return EvalOutcome(returns, env_steps, evaluator.env_restarts - before, error)


class EvalRunner(Protocol):
    """Evaluations that run elsewhere while learning goes on (the local runtime's evaluator
    process)."""

    busy: bool
    alive: bool

    def submit(self, index: int, params: np.ndarray, episodes: int, env_steps: int) -> None: ...

    def poll(self) -> EvalOutcome | None: ...

    def close(self) -> None: ...


class Evaluation:
    """The evaluation schedule (``eval.eval_period`` env steps, the target return) over the
    run's counters, and the evaluator that runs in line.

    Args:
        cfg, spaces: the experiment.
        counters: the run's counters (``next_eval_at``, ``evals``, solved-at, last returns).
        wall_time: seconds of training so far (for solved-at).
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, counters: Counters, wall_time: Callable[[], float]):
        self.cfg, self.c, self.wall_time = cfg, counters, wall_time
        self.evaluator = build_evaluator(cfg, spaces)
        self.failures = 0
        """Failed evaluations in a row; at :data:`MAX_FAILED_EVALUATIONS` evaluation is off."""

    @property
    def off(self) -> bool:
        """Evaluation was turned off after repeated failures."""
        return self.failures >= MAX_FAILED_EVALUATIONS

    def due(self) -> bool:
        return not self.off and self.c.env_steps >= self.c.next_eval_at

    def begin(self) -> int:
        """Schedule the next evaluation; returns this evaluation's index (which seeds its
        episodes, see :class:`~distdqn.roles.evaluator.Evaluator`)."""
        period = self.cfg.eval.eval_period
        while self.c.next_eval_at <= self.c.env_steps:
            self.c.next_eval_at += period if period > 0 else self.cfg.total_env_steps
        return self.evaluator.evaluations

    def in_line(self, params: np.ndarray) -> EvalOutcome:
        """Evaluate ``params`` here, now."""
        self.begin()
        return run_evaluation(self.evaluator, params, self.cfg.eval.eval_episodes, self.c.env_steps)

    def record(self, outcome: EvalOutcome) -> bool:
        """Record an evaluation of the parameters taken at ``outcome.env_steps`` (solved-at
        counts those env steps and the wall time now), or its failure (the
        :data:`MAX_FAILED_EVALUATIONS`-th in a row turns evaluation off, with a warning);
        its env restarts are counted either way. True when the target return is reached."""
        c = self.c
        c.env_restarts += outcome.env_restarts
        if outcome.returns is None:
            self.failures += 1
            log.warning("evaluation failed (%d in a row): %s", self.failures, outcome.error)
            if self.off:
                log.warning("evaluation is off for the rest of the run after %d failures in a row; "
                            "training goes on", self.failures)
            return False
        self.failures = 0
        returns = outcome.returns
        c.evals += 1
        c.last_eval_returns = [float(x) for x in returns]
        c.last_eval_return = float(np.mean(returns))
        target = self.cfg.eval.target_return
        solved = target is not None and c.last_eval_return >= target
        if solved and c.solved_at_env_steps < 0:
            c.solved_at_env_steps = outcome.env_steps
            c.solved_at_wall_time = self.wall_time()
        return solved

    def close(self) -> None:
        self.evaluator.close()
