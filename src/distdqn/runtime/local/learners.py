"""Learner processes of the local runtime (``gorila`` and ``sync``).

The learner process of the run (the driver's) keeps the replay and, for gorila, the
parameter server with its optimizer. It samples batches and sends them to each learner
process on a one-way pipe; each answers on another. A learner process runs the topology's
own learning step (:class:`~distdqn.topologies.gorila.GorilaUpdater`,
:class:`~distdqn.topologies.sync.SyncUpdater`) for its one learner, through ports that
carry the calls (:class:`LearnerService`):

- the replay port hands out the batch that arrived and puts the new priorities in the reply;
- gorila: the parameter port reads the newest parameters and target parameters from shared
  memory and puts the pushed gradient (with the version it was computed on) in the reply;
  the driver's process applies it with the parameter server (staleness-bounded) and
  publishes;
- sync: the learners form a ``torch.distributed`` group (gloo on CPU, NCCL on GPUs, file
  rendezvous) for the updater's collective; the driver's process feeds batches in whole
  rounds (one per learner) so every learner takes part in every collective, and rank 0's
  reply carries its parameters every ``publish_period`` updates.
"""

from __future__ import annotations

import collections
import logging
import queue as queue_mod
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distdqn.config import ExperimentConfig
from distdqn.core import Batch, NonFiniteLossError
from distdqn.envs import EnvSpaces
from distdqn.program import build_actor, build_learner
from distdqn.runtime import collective
from distdqn.runtime.codec import batch_from_numpy, batch_to_numpy
from distdqn.runtime.local.actors import receive
from distdqn.runtime.local.processes import ParentWatch, expected_parent
from distdqn.topologies import make_updater

log = logging.getLogger(__name__)

IN_FLIGHT = 2
"""Batches sent to a learner ahead of its replies."""


class ArrivedBatches:
    """The replay port of a learner process: the batches that arrived; new priorities are
    kept for the reply."""

    def __init__(self) -> None:
        self.batches: collections.deque[Batch] = collections.deque()
        self.priorities: list[tuple[np.ndarray, np.ndarray]] = []

    def can_sample(self, batch_size: int) -> bool:
        return bool(self.batches)

    def sample(self, batch_size: int, num_batches: int = 1) -> Batch:
        return self.batches.popleft()

    def update_priorities(self, keys: np.ndarray, td_abs: np.ndarray) -> None:
        self.priorities.append((keys, td_abs))


class SharedParamsPort:
    """The parameter port of a learner process: parameters from shared memory; a gradient
    (gorila) or parameters (sync, rank 0) are kept for the reply."""

    def __init__(self, params: Any, target: Any, gradient_mode: bool, publishes: bool):
        self.params, self.target, self.gradient_mode, self.publishes = params, target, gradient_mode, publishes
        self.pushed: tuple[np.ndarray, int] | None = None
        self.published: np.ndarray | None = None

    def get_params(self, newer_than: int = -1) -> tuple[int, np.ndarray] | None:
        return self.params.read(newer_than=newer_than)

    def get_target(self, newer_than: int = -1) -> tuple[int, np.ndarray] | None:
        return None if self.target is None else self.target.read(newer_than=newer_than)

    def apply_gradients(self, grads: torch.Tensor, based_on_version: int) -> None:
        self.pushed = (grads.numpy(), int(based_on_version))

    def set_params(self, flat: np.ndarray) -> None:
        if self.publishes:
            self.published = flat


class LearnerService:
    """One learner process's side of the protocol: a batch in, the topology's step, a reply out.

    Args:
        rank: this learner's rank.
        cfg, spaces: the experiment.
        params, target: shared parameters (and gorila's target parameters).
        init_file: sync: the ``torch.distributed`` file rendezvous.
        initial: the parameters every learner starts from.
    """

    def __init__(self, rank: int, cfg: ExperimentConfig, spaces: EnvSpaces, params: Any, target: Any,
                 init_file: str, initial: np.ndarray):
        self.rank, self.cfg = rank, cfg
        learner = build_learner(cfg, spaces)
        learner.set_params(initial)
        learner.set_target_params(initial)
        self.sync = cfg.topology == "sync"
        self.replay = ArrivedBatches()
        self.ps = SharedParamsPort(params, target, gradient_mode=not self.sync, publishes=rank == 0)
        extra: dict[str, Any] = {"learners": [learner]}
        if self.sync:
            collective.init_process_group(rank, cfg.learner.num_learners, init_file, cfg.learner.dist_backend)
            extra.update(collective=collective.DistCollective(), batches=1)
        self.updater = make_updater(cfg, spaces, self.ps, **extra)

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        """One batch; the reply carries ``error`` instead of results on a non-finite loss."""
        batch = batch_from_numpy(msg)
        reply: dict[str, Any] = {"rank": self.rank, "keys": batch.keys}
        self.replay.batches.append(batch)
        try:
            self.updater.step(self.replay)
        except NonFiniteLossError as exc:
            reply["error"] = str(exc)
            return reply
        td_abs = self.replay.priorities[0][1] if self.replay.priorities else None  # none: actor-critic
        self.replay.priorities.clear()
        reply.update(td_abs=td_abs, metrics=self.updater.metrics)
        if self.ps.pushed is not None:
            reply["grads"], reply["version"] = self.ps.pushed
            self.ps.pushed = None
        if self.sync:
            reply["updates"] = self.updater.updates
            if self.ps.published is not None:
                reply["params"], self.ps.published = self.ps.published, None
        return reply

    def close(self) -> None:
        if self.sync:
            collective.destroy_process_group()


def _serve_one(service: LearnerService, batch_conn: Any, result_conn: Any) -> bool:
    """Receive one batch, reply. False when the learner should stop: a ``None`` batch,
    end-of-file on either pipe, or a reply carrying an error."""
    try:
        msg = batch_conn.recv()
    except (EOFError, OSError):
        return False
    if msg is None:
        return False
    reply = service.handle(msg)
    try:
        result_conn.send(reply)
    except OSError:
        return False
    return "error" not in reply


def learner_main(rank: int, cfg: ExperimentConfig, spaces: EnvSpaces, params: Any, target: Any,
                 batch_conn: Any, result_conn: Any, init_file: str, initial: np.ndarray) -> None:
    """Body of a learner process (see module docstring). Exits on a ``None`` batch or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(cfg.learner.torch_threads)
    logging.basicConfig(level=logging.WARNING, format=f"[learner {rank}] %(levelname)s %(message)s")
    service = LearnerService(rank, cfg, spaces, params, target, init_file, initial)
    try:
        while _serve_one(service, batch_conn, result_conn):
            pass
    finally:
        service.close()
        result_conn.close()


def worker_main(rank: int, generation: int, cfg: ExperimentConfig, spaces: EnvSpaces, params: Any, target: Any,
                batch_conn: Any, result_conn: Any, chunk_conn: Any, stop_event: Any, parent_pid: int | None,
                init_file: str, initial: np.ndarray) -> None:
    """A colocated worker (``--colocate``): actor ``rank`` and learner ``rank`` in one process,
    the classic parameter-server compute node. Batches are served first; between them the
    actor steps. Chunks leave through a sender thread so a full pipe never stops learning."""
    parent = ParentWatch(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(cfg.learner.torch_threads)
    logging.basicConfig(level=logging.WARNING, format=f"[worker {rank}] %(levelname)s %(message)s")
    service = LearnerService(rank, cfg, spaces, params, target, init_file, initial)
    actor = build_actor(cfg, spaces, rank, generation)
    outbox: queue_mod.Queue = queue_mod.Queue(maxsize=1)

    def send_chunks() -> None:
        while True:
            chunk = outbox.get()
            if chunk is None:
                return
            try:
                chunk_conn.send(chunk)
            except OSError:
                return

    sender = threading.Thread(target=send_chunks, daemon=True)
    sender.start()
    steps = 0
    try:
        while True:
            if batch_conn.poll():
                if not _serve_one(service, batch_conn, result_conn):
                    return
                continue
            if stop_event.is_set() or outbox.full():
                batch_conn.poll(0.002)
            else:
                chunk = actor.tick(params.read)
                if chunk is not None:
                    outbox.put(chunk)
            steps += 1
            if steps % 256 == 0 and parent.gone():
                return
    except OSError:
        return
    finally:
        service.close()
        actor.close()
        try:
            outbox.put_nowait(None)
        except queue_mod.Full:
            pass
        result_conn.close()


class _Learner:
    def __init__(self, rank: int):
        self.rank = rank
        self.proc: Any = None
        self.batch_conn: Any = None
        self.inbox: queue_mod.Queue = queue_mod.Queue()
        self.in_flight = 0
        self.broken = False  # a send failed: the process is gone (its exit may not be reaped yet)


class RemoteLearners:
    """The driver's side of the learner processes: start, feed, collect, supervise, stop.

    Args:
        ctx: the multiprocessing context (:func:`distdqn.runtime.local.processes.process_context`).
        cfg, spaces: experiment.
        params: the shared parameters actors read too (:class:`~distdqn.runtime.local.shared.SharedParams`).
        target: shared target parameters (gorila) or None.
        stop_event: colocated workers stop stepping their actor when it is set.
        on_chunk_pipe: colocated workers (``--colocate``) also host actor ``rank``; their
            chunk pipe's read end and process are handed to the runtime as
            ``on_chunk_pipe(rank, reader, process)``.
    """

    def __init__(self, ctx: Any, cfg: ExperimentConfig, spaces: EnvSpaces, params: Any, target: Any,
                 stop_event: Any = None, on_chunk_pipe: Callable[[int, Any, Any], None] | None = None):
        self.ctx, self.cfg, self.spaces, self.params, self.target = ctx, cfg, spaces, params, target
        self.stop_event, self.on_chunk_pipe = stop_event, on_chunk_pipe
        self.generations = [0] * cfg.learner.num_learners
        self.m = cfg.learner.num_learners
        self.sync = cfg.topology == "sync"
        self.learners = [_Learner(r) for r in range(self.m)]
        self._tmp = tempfile.TemporaryDirectory(prefix="distdqn-dist-")

    def start(self, initial: np.ndarray) -> None:
        init_file = str(Path(self._tmp.name) / "rendezvous")
        for lr in self.learners:
            self._start(lr, init_file, initial)

    def _start(self, lr: _Learner, init_file: str, initial: np.ndarray) -> None:
        b_read, b_write = self.ctx.Pipe(duplex=False)
        r_read, r_write = self.ctx.Pipe(duplex=False)
        if self.cfg.colocate:
            c_read, c_write = self.ctx.Pipe(duplex=False)
            lr.proc = self.ctx.Process(
                target=worker_main,
                args=(lr.rank, self.generations[lr.rank], self.cfg, self.spaces, self.params, self.target,
                      b_read, r_write, c_write, self.stop_event, expected_parent(self.ctx), init_file, initial),
                name=f"distdqn-worker-{lr.rank}", daemon=True)
            lr.proc.start()
            c_write.close()
            assert self.on_chunk_pipe is not None
            self.on_chunk_pipe(lr.rank, c_read, lr.proc)
        else:
            lr.proc = self.ctx.Process(
                target=learner_main,
                args=(lr.rank, self.cfg, self.spaces, self.params, self.target, b_read, r_write, init_file, initial),
                name=f"distdqn-learner-{lr.rank}", daemon=True)
            lr.proc.start()
        b_read.close()
        r_write.close()
        lr.batch_conn = b_write
        lr.inbox = queue_mod.Queue()
        lr.in_flight = 0
        lr.broken = False
        threading.Thread(target=receive, args=(r_read, lr.inbox, threading.Event(), threading.Event()),
                         daemon=True, name=f"distdqn-lrecv-{lr.rank}").start()

    def feed(self, replay: Any) -> int:
        """Send batches while learners have room and the rate limiter allows; returns batches sent."""
        b = self.cfg.learner.batch_size
        sent = 0
        if self.sync:  # whole rounds only: every learner must join every collective
            while (all(lr.in_flight < IN_FLIGHT and not lr.broken for lr in self.learners)
                   and replay.can_sample(b * self.m)):
                for lr in self.learners:
                    self._send(lr, replay.sample(b))
                sent += self.m
            return sent
        own = self.cfg.topology == "a3c"  # each worker's learner reads its own actor's pool
        for lr in self.learners:
            pool = {"pool": lr.rank} if own else {}
            while lr.in_flight < IN_FLIGHT and not lr.broken and replay.can_sample(b, **pool):
                if self._send(lr, replay.sample(b, **pool)):
                    sent += 1
        return sent

    def _send(self, lr: _Learner, batch: Batch) -> bool:
        """Send one batch; False when the learner's pipe is broken (the process died and
        :meth:`dead` reports it; the batch was only a sample, nothing is lost)."""
        try:
            lr.batch_conn.send(batch_to_numpy(batch))
        except OSError:
            lr.broken = True
            return False
        lr.in_flight += 1
        return True

    def results(self) -> list[dict[str, Any]]:
        """Replies received so far (non-blocking)."""
        out = []
        for lr in self.learners:
            while True:
                try:
                    reply = lr.inbox.get_nowait()
                except queue_mod.Empty:
                    break
                lr.in_flight -= 1
                out.append(reply)
        return out

    def dead(self) -> list[int]:
        return [lr.rank for lr in self.learners if lr.broken or not lr.proc.is_alive()]

    def restart(self, rank: int, initial: np.ndarray) -> None:
        """Restart a dead gorila learner (sync learners share collectives: not restartable)."""
        lr = self.learners[rank]
        lr.proc.join(timeout=0)
        self.generations[rank] += 1
        self._start(lr, str(Path(self._tmp.name) / "rendezvous"), initial)

    def stop(self, grace_s: float = 10.0) -> None:
        for lr in self.learners:
            try:
                lr.batch_conn.send(None)
            except OSError:
                pass
        deadline = time.perf_counter() + grace_s
        for lr in self.learners:
            lr.proc.join(timeout=max(0.0, deadline - time.perf_counter()))
            if lr.proc.is_alive():
                log.warning("learner %d did not stop in %.0fs; killing it", lr.rank, grace_s)
                lr.proc.kill()
                lr.proc.join(timeout=5)
            lr.batch_conn.close()
        self._tmp.cleanup()
