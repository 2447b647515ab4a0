"""Serial runtime: every role in one process, stepping in a fixed order. Deterministic for a
seed (the same seed gives the same ``metrics.csv``; a resumed run is bit-identical to an
uninterrupted one). The base of most tests and the first place to debug."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distdqn.config import ExperimentConfig, inference_batch
from distdqn.envs import EnvSpaces
from distdqn.program import (
    build_actor,
    build_env_worker,
    build_inference_server,
    build_parameter_server,
    build_replay,
)
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
        self.seed = SerialSeed(cfg, spaces) if cfg.topology == "seed" else None
        self.actors = [] if self.seed else [build_actor(cfg, spaces, i) for i in range(cfg.actor.num_actors)]
        self.turn = 0
        self.driver: Driver | None = None

    def restore_extra(self, extra: dict[str, Any]) -> None:
        for actor, st in zip(self.actors, extra.get("actors", [])):
            actor.load_state_dict(st)
        self.turn = int(extra.get("turn", 0))

    def checkpoint_extra(self) -> dict[str, Any]:
        # seed: the env workers start new episodes on resume (not bit-identical)
        return {"actors": [a.state_dict() for a in self.actors], "turn": self.turn}

    def start(self, driver: Driver) -> None:
        self.driver = driver

    def _learn(self) -> None:
        up = self.parts.updater
        up.step(self.parts.replay)
        self.driver.report.learn_metrics = up.metrics

    def pump(self) -> bool:
        replay, ps, up = self.parts.replay, self.parts.ps, self.parts.updater
        self.turn += 1
        if self.seed is not None:
            chunk = self.seed.next_chunk(ps.get_params)
        else:
            actor = self.actors[(self.turn - 1) % len(self.actors)]
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
        if self.seed is not None:
            self.seed.close()

    def build(self) -> None:
        pass  # built with the runtime: the actors' checkpointed state needs them

    def abort(self) -> None:
        self.close()


class SerialSeed:
    """SEED's env workers and inference server in this process, in a fixed order: per round
    and per half h, one batched pass (at most ``inference.max_batch`` observations each) for
    half h of every worker, then each worker steps its half h. Parameters are synced every
    ``actor.param_sync_period`` rounds."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces):
        self.cfg = cfg
        self.splits = cfg.inference.splits
        self.workers = [build_env_worker(cfg, w) for w in range(cfg.actor.num_actors)]
        self.server = build_inference_server(cfg, spaces)
        for w, worker in enumerate(self.workers):
            for h in range(self.splits):
                self.server.open(w * self.splits + h, 0, worker.reset(h))
        self.pending: collections.deque = collections.deque()
        self.rounds = 0

    def next_chunk(self, fetch: Callable[[int], tuple[int, np.ndarray] | None]) -> Any:
        """The next chunk any slot completes (``fetch`` reads newer parameters, as for actors)."""
        while not self.pending:
            if self.rounds % self.cfg.actor.param_sync_period == 0 or self.server.version < 0:
                got = fetch(self.server.version)
                if got is not None:
                    self.server.set_params(*got)
            self.rounds += 1
            for h in range(self.splits):
                self._half(h)
        return self.pending.popleft()

    def _half(self, h: int) -> None:
        server, s = self.server, self.splits
        slots = [w * s + h for w in range(len(self.workers))]
        actions: list[np.ndarray] = []
        group: list[int] = []
        max_batch = inference_batch(self.cfg)
        for k in slots:
            if group and (len(group) + 1) * server.num_envs(k) > max_batch:
                actions += server.infer(group)
                group = []
            group.append(k)
        actions += server.infer(group)
        for k, a in zip(slots, actions):
            chunk = server.observe(k, self.workers[k // s].step(h, a))
            if chunk is not None:
                chunk.stats = {"inference_batch": server.mean_batch()}
                self.pending.append(chunk)

    def close(self) -> None:
        for w in self.workers:
            w.close()


def run_serial(cfg: ExperimentConfig, spaces: EnvSpaces, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train in one process. Returns the summary (also written to ``summary.json``).

    Raises:
        NonFiniteLossError: a NaN/inf loss (after the final checkpoint and summary).
        FileNotFoundError: ``resume`` without a usable checkpoint.
    """
    torch.set_num_threads(cfg.learner.torch_threads)
    return drive(cfg, spaces, run_dir, SerialRuntime(cfg, spaces), resume)
