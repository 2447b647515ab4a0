"""When the run evaluates, and what came of it: the evaluation schedule, the target return,
and the in-line evaluator (the :class:`~distdqn.roles.evaluator.Evaluator` role)."""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from distdqn.config import ExperimentConfig
from distdqn.envs import EnvSpaces
from distdqn.program import build_evaluator
from distdqn.runtime.ledger import Counters


class EvalRunner(Protocol):
    """Evaluations that run elsewhere while learning goes on (the local runtime's evaluator
    process)."""

    busy: bool
    alive: bool

    def submit(self, index: int, params: np.ndarray, episodes: int, env_steps: int) -> None: ...

    def poll(self) -> tuple[np.ndarray, int] | None: ...

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

    def due(self) -> bool:
        return self.c.env_steps >= self.c.next_eval_at

    def begin(self) -> int:
        """Schedule the next evaluation; returns this evaluation's index (which seeds its
        episodes, see :class:`~distdqn.roles.evaluator.Evaluator`)."""
        period = self.cfg.eval.eval_period
        while self.c.next_eval_at <= self.c.env_steps:
            self.c.next_eval_at += period if period > 0 else self.cfg.total_env_steps
        return self.evaluator.evaluations

    def in_line(self, params: np.ndarray) -> tuple[np.ndarray, int]:
        """Evaluate ``params`` here, now: ``(returns, env_steps)``."""
        self.begin()
        return self.evaluator.evaluate(params, self.cfg.eval.eval_episodes), self.c.env_steps

    def record(self, returns: np.ndarray, env_steps: int) -> bool:
        """Record the returns of an evaluation of the parameters taken at ``env_steps``
        (solved-at counts those env steps and the wall time now); True when the target
        return is reached."""
        c = self.c
        c.evals += 1
        c.last_eval_returns = [float(x) for x in returns]
        c.last_eval_return = float(np.mean(returns))
        target = self.cfg.eval.target_return
        solved = target is not None and c.last_eval_return >= target
        if solved and c.solved_at_env_steps < 0:
            c.solved_at_env_steps = env_steps
            c.solved_at_wall_time = self.wall_time()
        return solved

    def close(self) -> None:
        self.evaluator.close()
