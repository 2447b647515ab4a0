"""The evaluator role in a process of its own (``eval.separate_process``): greedy episodes
run there while the learner process goes on learning."""

from __future__ import annotations

import logging
import signal
from typing import Any

import numpy as np
import torch

from distdqn.config import ExperimentConfig
from distdqn.envs import EnvSpaces
from distdqn.program import build_evaluator
from distdqn.runtime.evaluation import EvalOutcome, run_evaluation

log = logging.getLogger(__name__)


def evaluator_main(cfg: ExperimentConfig, spaces: EnvSpaces, conn: Any) -> None:
    """Body of the evaluator process: ``(index, params, episodes, env_steps)`` requests in,
    an :class:`~distdqn.runtime.evaluation.EvalOutcome` out (a failed evaluation too: envs
    that raise are recreated in here), until ``None`` or end-of-file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the learner process coordinates shutdown
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="[evaluator] %(levelname)s %(message)s")
    evaluator = build_evaluator(cfg, spaces)
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the learner process is gone
                return
            if msg is None:
                return
            index, params, episodes, env_steps = msg
            evaluator.evaluations = index  # seeds this evaluation's episodes like in-line ones
            outcome = run_evaluation(evaluator, params, episodes, env_steps)
            try:
                conn.send(tuple(outcome))
            except OSError:  # the learner process is gone
                return
    finally:
        evaluator.close()
        conn.close()


class EvalProcess:
    """The evaluator role in a process of its own (``eval.separate_process``): greedy
    episodes run there while the learner process goes on learning. One evaluation at a
    time. If the process dies, ``alive`` turns False (the caller evaluates in line)."""

    def __init__(self, ctx: Any, cfg: ExperimentConfig, spaces: EnvSpaces):
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=evaluator_main, args=(cfg, spaces, child), name="distdqn-evaluator",
                                 daemon=True)
        self._proc.start()
        child.close()
        self.busy = False
        self.alive = True

    def submit(self, index: int, params: np.ndarray, episodes: int, env_steps: int) -> None:
        """Start evaluation ``index`` of ``params`` (taken at ``env_steps``)."""
        try:
            self._conn.send((index, params, episodes, env_steps))
            self.busy = True
        except OSError:
            self._lost()

    def poll(self) -> EvalOutcome | None:
        """The finished evaluation's outcome, or None."""
        if not self.busy:
            return None
        try:
            if not self._conn.poll():
                if not self._proc.is_alive():
                    self._lost()
                return None
            outcome = EvalOutcome(*self._conn.recv())
        except (EOFError, OSError):
            self._lost()
            return None
        self.busy = False
        return outcome

    def _lost(self) -> None:
        log.warning("the evaluator process died (exit code %s); evaluating in the learner process from now on",
                    self._proc.exitcode)
        self.busy, self.alive = False, False

    def close(self) -> None:
        """Stop the process (an evaluation in flight is abandoned)."""
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(timeout=2.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        self._conn.close()
