"""Learner processes for the local runtime's ``gorila`` and ``sync`` presets.

The learner-side main process keeps the replay (and, for gorila, the parameter server
with its optimizer). Each learner process receives sampled batches on a one-way pipe
and answers on another:

- ``gorila`` (Nair et al. 2015): before each batch the learner pulls the newest
  parameters (and target parameters) from shared memory if they are newer, computes the
  gradient and sends it with the version it was computed on; the main process applies it
  with :meth:`ParameterServer.apply_gradients` (staleness-bounded) and publishes.
- ``sync``: the learners form a ``torch.distributed`` group (gloo on CPU, NCCL on GPUs,
  file rendezvous). ``allreduce``: every step the gradients are averaged with
  ``all_reduce`` and each learner applies the mean with its own optimizer, so all hold
  identical parameters; ``average``: local steps, then every ``average_period`` updates
  the parameters are averaged. The main process feeds batches in whole rounds (one per
  learner), so every learner takes part in every collective; rank 0 reports parameters
  every ``publish_period`` updates.

Every reply carries the batch's replay keys and |TD errors| for priority updates.
"""

from __future__ import annotations

import logging
import queue as queue_mod
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from distdqn.config import ExperimentConfig
from distdqn.core import NonFiniteLossError, SampledBatch
from distdqn.envs import EnvSpaces
from distdqn.program import build_learner
from distdqn.runtime import collective
from distdqn.runtime.processes import ParentWatch, expected_parent

log = logging.getLogger(__name__)

IN_FLIGHT = 2
"""Batches sent to a learner ahead of its replies."""


def batch_to_numpy(batch: SampledBatch) -> dict[str, np.ndarray]:
    """A batch as plain numpy arrays (pickled by the standard library on the pipe)."""
    return {"obs": batch.obs.numpy(), "action": batch.action.numpy(), "reward": batch.reward.numpy(),
            "discount": batch.discount.numpy(), "next_obs": batch.next_obs.numpy(),
            "weights": batch.weights.numpy(), "keys": batch.keys}


def batch_from_numpy(d: dict[str, np.ndarray]) -> SampledBatch:
    return SampledBatch(obs=torch.from_numpy(d["obs"]), action=torch.from_numpy(d["action"]),
                        reward=torch.from_numpy(d["reward"]), discount=torch.from_numpy(d["discount"]),
                        next_obs=torch.from_numpy(d["next_obs"]), weights=torch.from_numpy(d["weights"]),
                        keys=d["keys"])


class LearnerLoop:
    """One learner's side of the protocol: a sampled batch in, a reply out (see module doc)."""

    def __init__(self, rank: int, cfg: ExperimentConfig, spaces: EnvSpaces, params: Any, target: Any,
                 init_file: str, initial: np.ndarray):
        self.rank, self.cfg, self.params, self.target = rank, cfg, params, target
        self.learner = build_learner(cfg, spaces)
        self.learner.set_params(initial)
        self.learner.set_target_params(initial)
        self.sync = cfg.preset == "sync"
        if self.sync:
            collective.init_process_group(rank, cfg.learner.num_learners, init_file, cfg.learner.dist_backend)
        self.version, self.target_version = -1, -1

    def handle(self, msg: dict[str, np.ndarray]) -> dict[str, Any]:
        """Process one batch; the reply carries ``error`` instead of results on a non-finite loss."""
        cfg, learner = self.cfg, self.learner
        batch = batch_from_numpy(msg)
        reply: dict[str, Any] = {"rank": self.rank, "keys": batch.keys}
        try:
            if not self.sync:
                got = self.params.read(newer_than=self.version)
                if got is not None:
                    self.version = got[0]
                    learner.set_params(got[1])
                tgt = self.target.read(newer_than=self.target_version)
                if tgt is not None:
                    self.target_version = tgt[0]
                    learner.set_target_params(tgt[1])
                out = learner.compute_gradients(batch)
                reply.update(grads=out.grads.numpy(), version=self.version)
            elif cfg.learner.sync_mode == "allreduce":
                out = learner.compute_gradients(batch)
                grads = out.grads.to(learner.device)  # NCCL reduces GPU tensors
                collective.allreduce_mean_(grads)
                learner.apply_gradients(grads)
            else:
                out = learner.learn(batch)
                if learner.updates % cfg.learner.average_period == 0:
                    collective.average_parameters_(learner.online)
        except NonFiniteLossError as exc:
            reply["error"] = str(exc)
            return reply
        reply.update(td_abs=out.td_abs, metrics=out.metrics)
        if self.sync:
            reply["updates"] = learner.updates
            if self.rank == 0 and learner.updates % cfg.learner.publish_period == 0:
                reply["params"] = learner.get_params()
        return reply

    def close(self) -> None:
        if self.sync:
            collective.destroy_process_group()


def _serve_one(loop: LearnerLoop, batch_conn: Any, result_conn: Any) -> bool:
    """Receive one batch, reply. False when the learner should stop: a ``None`` batch,
    end-of-file on either pipe, or a reply carrying an error."""
    try:
        msg = batch_conn.recv()
    except (EOFError, OSError):
        return False
    if msg is None:
        return False
    reply = loop.handle(msg)
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
    loop = LearnerLoop(rank, cfg, spaces, params, target, init_file, initial)
    try:
        while _serve_one(loop, batch_conn, result_conn):
            pass
    finally:
        loop.close()
        result_conn.close()


def worker_main(rank: int, generation: int, cfg: ExperimentConfig, spaces: EnvSpaces, params: Any, target: Any,
                batch_conn: Any, result_conn: Any, chunk_conn: Any, stop_event: Any, parent_pid: int | None,
                init_file: str, initial: np.ndarray) -> None:
    """A colocated worker (``--colocate``): actor ``rank`` and learner ``rank`` in one process,
    the classic parameter-server compute node. Batches are served first; between them the
    actor steps. Chunks leave through a sender thread so a full pipe never stops learning."""
    from distdqn.runtime.local import ActorLoop

    parent = ParentWatch(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(cfg.learner.torch_threads)
    logging.basicConfig(level=logging.WARNING, format=f"[worker {rank}] %(levelname)s %(message)s")
    loop = LearnerLoop(rank, cfg, spaces, params, target, init_file, initial)
    actor = ActorLoop(rank, generation, cfg, spaces, params)
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
                if not _serve_one(loop, batch_conn, result_conn):
                    return
                continue
            if stop_event.is_set() or outbox.full():
                batch_conn.poll(0.002)
            else:
                chunk = actor.tick()
                if chunk is not None:
                    outbox.put(chunk)
            steps += 1
            if steps % 256 == 0 and parent.gone():
                return
    except OSError:
        return
    finally:
        loop.close()
        actor.close()
        try:
            outbox.put_nowait(None)
        except queue_mod.Full:
            pass
        result_conn.close()


def _receive(conn: Any, inbox: queue_mod.Queue) -> None:
    try:
        while True:
            inbox.put(conn.recv())
    except (EOFError, OSError):
        return
    finally:
        conn.close()


class _Learner:
    def __init__(self, rank: int):
        self.rank = rank
        self.proc: Any = None
        self.batch_conn: Any = None
        self.inbox: queue_mod.Queue = queue_mod.Queue()
        self.in_flight = 0
        self.broken = False  # a send failed: the process is gone (its exit may not be reaped yet)


class RemoteLearners:
    """Main-process side of the learner processes: start, feed, collect, supervise, stop.

    Args:
        ctx: the multiprocessing context (:func:`distdqn.runtime.processes.process_context`).
        cfg, spaces: experiment.
        params: the shared parameters actors read too (:class:`~distdqn.runtime.local.SharedParams`).
        target: shared target parameters (gorila) or None.
    """

    def __init__(self, ctx: Any, cfg: ExperimentConfig, spaces: EnvSpaces, params: Any, target: Any,
                 stop_event: Any = None, on_chunk_pipe: Callable[[int, Any, Any], None] | None = None):
        self.ctx, self.cfg, self.spaces, self.params, self.target = ctx, cfg, spaces, params, target
        # colocated workers (--colocate) also host actor `rank`; their chunk pipe's read end
        # and process are handed to the runtime through on_chunk_pipe(rank, reader, process)
        self.stop_event, self.on_chunk_pipe = stop_event, on_chunk_pipe
        self.generations = [0] * cfg.learner.num_learners
        self.m = cfg.learner.num_learners
        self.sync = cfg.preset == "sync"
        self.learners = [_Learner(r) for r in range(self.m)]
        self._tmp = tempfile.TemporaryDirectory(prefix="distdqn-dist-")
        self.restarts = 0
        self.metrics: dict[str, float] = {}
        self.staleness: list[int] = []

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
        threading.Thread(target=_receive, args=(r_read, lr.inbox), daemon=True,
                         name=f"distdqn-lrecv-{lr.rank}").start()

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
        for lr in self.learners:
            while lr.in_flight < IN_FLIGHT and not lr.broken and replay.can_sample(b):
                if self._send(lr, replay.sample(b)):
                    sent += 1
        return sent

    def _send(self, lr: _Learner, batch: SampledBatch) -> bool:
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
        self.restarts += 1
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
        self.results()
        self._tmp.cleanup()

