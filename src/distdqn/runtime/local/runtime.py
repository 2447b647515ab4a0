"""The local runtime: one process per actor (:mod:`~distdqn.runtime.local.actors`), the
driver's process owning replay, learning, metrics and checkpoints, learner processes for
gorila and sync (:mod:`~distdqn.runtime.local.learners`), and an evaluator process
(:mod:`~distdqn.runtime.local.evaluator`). Children are forks of a fork server that imported
distdqn once (``spawn`` where there is none; :mod:`~distdqn.runtime.local.processes`).

Parameters reach the actors through one shared-memory vector under a sequence lock
(:class:`~distdqn.runtime.local.shared.SharedParams`), written every time the parameter
server gets a new version; actors poll it every ``param_sync_period`` steps. The
evaluator process (``eval.separate_process``) gets the newest parameters with each request
and is started once every actor has delivered a chunk (or the first evaluation is due), so
that its start-up does not take the CPU the actors need to start.

SIGINT/SIGTERM (and the budget, the target return, a run-ending error) stop the run
gracefully: actors are told to stop, send their last partial chunk and are joined (killed
after a grace period); every chunk still in a pipe or an inbox is inserted into the replay,
past the rate limiter; then the driver's tail writes the final checkpoint and
``summary.json``. Only an abrupt stop (a second Ctrl-C) counts what was in flight as
``dropped``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from distdqn.config import ExperimentConfig
from distdqn.core import NonFiniteLossError, flat_params
from distdqn.envs import EnvSpaces
from distdqn.program import build_network, build_parameter_server, build_replay
from distdqn.runtime.driver import Driver, Parts, RunAborted
from distdqn.runtime.local.actors import ActorPool
from distdqn.runtime.local.evaluator import EvalProcess
from distdqn.runtime.local.learners import RemoteLearners
from distdqn.runtime.local.processes import process_context
from distdqn.runtime.local.seed import SeedPool
from distdqn.runtime.local.shared import SharedParams
from distdqn.topologies import make_updater

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.005
"""Longest idle wait of the main loop for a chunk (bounds the delay of periodic duties)."""
SUPERVISE_PERIOD_S = 0.2


class LearnerLostError(RunAborted):
    """A learner process died and the topology cannot replace it."""


class LocalRuntime:
    """Actor processes, the learner side in this process (or learner processes), an
    evaluator process (module docstring).

    A fresh apex run starts its actors at once (:meth:`early_start`), before the learner
    side is built: they wait for the first parameters, and their start-up (building envs
    and tracing the network) overlaps the learner side's. A resumed run needs the
    checkpoint's actor generations first; gorila and sync start their learner processes
    first.

    Args:
        cfg, spaces: the experiment.
        collect_only: actors collect and the learner side only inserts (benchmarking the
            collection path); needs ``replay.samples_per_insert == 0``.
    """

    deterministic = False
    tail_errors: tuple[type[BaseException], ...] = ()
    transient_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, collect_only: bool = False):
        if collect_only and cfg.replay.samples_per_insert != 0:
            raise ValueError("collect_only needs replay.samples_per_insert=0 (no rate limiting)")
        self.cfg, self.spaces, self.collect_only = cfg, spaces, collect_only
        self.ctx = process_context()
        self.remote_learning = cfg.topology in ("gorila", "sync", "a3c") and not collect_only
        self.shared = SharedParams(self.ctx, int(flat_params(build_network(cfg, spaces)).size))
        self.target_shared: SharedParams | None = None
        pool = SeedPool if cfg.topology == "seed" else ActorPool
        self.actors = pool(self.ctx, cfg, spaces, self.shared, on_drop=self._drop)
        self.remote: RemoteLearners | None = None
        self.evaluator: EvalProcess | None = None
        self.driver: Driver | None = None
        self._started_early = False
        # About 8 updates between looks at the inboxes (an apex step takes batches_per_sample).
        self._learn_steps_per_pass = max(1, 8 // cfg.learner.batches_per_sample)
        self._next_supervise = 0.0

    def early_start(self, resume: bool) -> None:
        """Start the actors now when they may start before the learner side is built."""
        if not resume and not self.cfg.colocate and not self.remote_learning:
            self.actors.start_all()
            self._started_early = True

    def build(self) -> None:
        """Build the learner side: replay, parameter server and (apex) the updater here."""
        cfg, spaces = self.cfg, self.spaces
        replay = build_replay(cfg, spaces)
        ps = build_parameter_server(cfg, spaces)
        updater = None if self.remote_learning else make_updater(cfg, spaces, ps)
        self.parts = Parts(replay=replay, ps=ps, updater=updater)
        assert ps.num_params == self.shared.num_params, "shared parameter vector and network disagree"

    def abort(self) -> None:
        """The learner side could not be built: stop the actors started early."""
        self.actors.stop_unstarted()

    # ------------------------------------------------------------------ driver hooks

    def restore_extra(self, extra: dict[str, Any]) -> None:
        for h, g in zip(self.actors.handles, extra.get("actor_generations", [])):
            h.generation = int(g) + 1  # resumed actors explore with fresh seeds

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"actor_generations": [h.generation for h in self.actors.handles]}

    def _drop(self, n: int) -> None:
        self.driver.ledger.drop(n)

    def start(self, driver: Driver) -> None:
        self.driver = driver
        cfg, ps = self.cfg, self.parts.ps
        self.shared.write(ps.version, self.current_params())
        if self.remote_learning:
            if ps.gradient_mode:
                self.target_shared = SharedParams(self.ctx, ps.num_params)
                self.target_shared.write(*ps.get_target())
            pool = self.actors
            self.remote = RemoteLearners(
                self.ctx, cfg, self.spaces, self.shared, self.target_shared, pool.stop_event,
                on_chunk_pipe=lambda rank, reader, proc: pool.attach(pool.handles[rank], reader, proc))
            self.remote.start(self.current_params())
        if not cfg.colocate and not self._started_early:  # colocated actors live in the learner workers
            self.actors.start_all()

    def current_params(self) -> np.ndarray:
        up = self.parts.updater
        return up.params() if up is not None else self.parts.ps.get_params()[1]

    def eval_runner(self) -> EvalProcess | None:
        return self.evaluator

    def pump(self) -> bool:
        d, replay, ps = self.driver, self.parts.replay, self.parts.ps
        self.actors.arrived.clear()
        chunk_size = self.cfg.actor.chunk_size
        progressed = self.actors.take(lambda: replay.can_insert(chunk_size),
                                      lambda chunk: d.ledger.ingest(replay, chunk, ps.version))
        if (self.evaluator is None and self.cfg.eval.separate_process and self.cfg.eval.eval_period > 0
                and not self.collect_only and (self.actors.all_delivered() or d.evaluation.due())):
            self.evaluator = EvalProcess(self.ctx, self.cfg, self.spaces)
        if self.remote is not None:
            progressed |= self.remote.feed(replay) > 0
            for reply in self.remote.results():
                self._handle_reply(reply)
                progressed = True
        elif not self.collect_only:
            up, published = self.parts.updater, False
            for _ in range(self._learn_steps_per_pass):
                if not up.can_step(replay):
                    break
                published |= up.step(replay)
                d.report.learn_metrics = up.metrics
                progressed = True
            if published:
                self.shared.write(ps.version, ps.get_params()[1])
        return progressed

    def _handle_reply(self, reply: dict[str, Any]) -> None:
        """Apply one learner process's reply: priorities, and gradients (gorila) or reported
        parameters (sync)."""
        d, ps = self.driver, self.parts.ps
        if "error" in reply:
            raise NonFiniteLossError(f"learner {reply['rank']}: {reply['error']}")
        if reply["td_abs"] is not None:
            self.parts.replay.update_priorities(reply["keys"], reply["td_abs"])
        d.report.learn_metrics = reply["metrics"]
        d.report.note_learner(int(reply["rank"]), reply["metrics"])
        if "grads" in reply:
            result = ps.apply_gradients(reply["grads"], reply["version"])
            d.remote_updates = ps.applied_updates
            if result.applied:
                self.shared.write(ps.version, ps.get_params()[1])
                got = ps.get_target(newer_than=self.target_shared.version()) if self.target_shared else None
                if got is not None:
                    self.target_shared.write(*got)
            return
        if reply["rank"] == 0:
            d.remote_updates = int(reply["updates"])
        if "params" in reply:
            ps.set_params(reply["params"])
            self.shared.write(ps.version, reply["params"])

    def supervise(self) -> None:
        now = time.perf_counter()
        if now < self._next_supervise:
            return
        self._next_supervise = now + SUPERVISE_PERIOD_S
        c = self.driver.c
        if not self.cfg.colocate:
            self.actors.supervise(self._count_actor_restart, self._keep())
        if self.remote is None:
            return
        for rank in self.remote.dead():
            if not self.parts.ps.gradient_mode:
                raise LearnerLostError(f"learner {rank} died; synchronous learners cannot continue "
                                       "without it (its peers would wait in the collective)")
            c.learner_restarts += 1
            log.warning("learner %d died; restarting it", rank)
            if self.cfg.colocate:
                c.actor_restarts += 1
                self.actors.collect(self.actors.handles[rank], self._keep())
            self.remote.restart(rank, self.current_params())

    def _count_actor_restart(self) -> int:
        self.driver.c.actor_restarts += 1
        return self.driver.c.actor_restarts

    def idle(self) -> None:
        # Nothing to do until a chunk arrives (remote learners' replies are polled).
        if self.remote is None:
            self.actors.arrived.wait(IDLE_WAIT_S)
        else:
            time.sleep(0.0005)

    def stop(self, graceful: bool = True) -> None:
        if self.remote is not None:
            self.remote.stop()
            for reply in self.remote.results():
                if "error" not in reply:
                    self._handle_reply(reply)
        self.actors.shutdown(self._keep() if graceful and self.driver is not None else None)

    def _keep(self) -> Callable[[Any], None]:
        """Insert a chunk now, past the rate limiter (chunks in flight at a stop, or sent by
        an actor that died: few, and never to be sent again)."""
        d, replay, ps = self.driver, self.parts.replay, self.parts.ps
        return lambda chunk: d.ledger.ingest(replay, chunk, ps.version)

    def close(self) -> None:
        pass
