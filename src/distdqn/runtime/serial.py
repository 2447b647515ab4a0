"""Serial runtime: every role in one process, stepping in a fixed order. Deterministic for a
seed (the same seed gives the same ``metrics.csv``; a resumed run is bit-identical to an
uninterrupted one). The base of most tests and the first place to debug."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from distdqn.config import ExperimentConfig
from distdqn.envs import EnvSpaces
from distdqn.program import build_actor, build_parameter_server, build_replay
from distdqn.runtime.driver import Driver, Parts, drive
from distdqn.topologies import make_updater


class SerialRuntime:
    """The roles of the topology in this process: the replay, the parameter server, the
    topology's updater with all its learners, and ``actor.num_actors`` actors.

    One pass (:meth:`pump`): actor k (in turn) steps until it has a chunk; the chunk is
    inserted once the rate limiter allows (learning meanwhile); then the updater takes every
    step the rate limiter allows (one per chunk when ``samples_per_insert`` is 0).
    """

    deterministic = True
    tail_errors: tuple[type[BaseException], ...] = ()
    transient_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces):
        self.cfg = cfg
        replay = build_replay(cfg, spaces)
        ps = build_parameter_server(cfg, spaces)
        self.parts = Parts(replay=replay, ps=ps, updater=make_updater(cfg, spaces, ps))
        self.actors = [build_actor(cfg, spaces, i) for i in range(cfg.actor.num_actors)]
        self.turn = 0
        self.driver: Driver | None = None

    def restore_extra(self, extra: dict[str, Any]) -> None:
        for actor, st in zip(self.actors, extra.get("actors", [])):
            actor.load_state_dict(st)
        self.turn = int(extra.get("turn", 0))

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"actors": [a.state_dict() for a in self.actors], "turn": self.turn}

    def start(self, driver: Driver) -> None:
        self.driver = driver

    def _learn(self) -> None:
        up = self.parts.updater
        up.step(self.parts.replay)
        self.driver.report.learn_metrics = up.metrics

    def pump(self) -> bool:
        replay, ps, up = self.parts.replay, self.parts.ps, self.parts.updater
        actor = self.actors[self.turn % len(self.actors)]
        self.turn += 1
        chunk = None
        while chunk is None:
            chunk = actor.tick(ps.get_params)
        while not replay.can_insert(len(chunk)):
            self._learn()
        self.driver.ledger.ingest(replay, chunk, ps.version)
        if self.cfg.replay.samples_per_insert == 0:
            if up.can_step(replay):
                self._learn()
        else:
            while up.can_step(replay):
                self._learn()
        return True

    def supervise(self) -> None:
        pass

    def idle(self) -> None:
        pass

    def eval_runner(self) -> None:
        return None

    def current_params(self) -> np.ndarray:
        return self.parts.updater.params()

    def stop(self, graceful: bool = True) -> None:
        pass

    def close(self) -> None:
        for a in self.actors:
            a.close()

    def build(self) -> None:
        pass  # built with the runtime: the actors' checkpointed state needs them

    def abort(self) -> None:
        self.close()


def run_serial(cfg: ExperimentConfig, spaces: EnvSpaces, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train in one process. Returns the summary (also written to ``summary.json``).

    Raises:
        NonFiniteLossError: a NaN/inf loss (after the final checkpoint and summary).
        FileNotFoundError: ``resume`` without a usable checkpoint.
    """
    torch.set_num_threads(cfg.learner.torch_threads)
    return drive(cfg, spaces, run_dir, SerialRuntime(cfg, spaces), resume)
