"""Local runtime: one process per actor, the learner process owning replay, learning,
metrics and checkpoints, and an evaluator process. Children are forks of a fork server
that imported distdqn once (``spawn`` where there is none; :mod:`distdqn.runtime.processes`).

Data paths:

- experience: each actor sends whole :class:`~distdqn.core.TransitionChunk` objects down its
  own one-way ``multiprocessing`` pipe (numpy arrays, pickled by the standard library). In
  the learner process a receiver thread per actor moves them into a small in-process inbox.
  The learner takes a chunk only when the replay's rate limiter allows an insert; a full
  inbox stops the receiver, the pipe fills and the actor blocks in ``send``: that is how
  ``samples_per_insert`` throttles collection. The learner process keeps no copy of the
  pipe's write end, so an actor that dies (even mid-message) shows up as end-of-file on its
  receiver thread and can never leave the learner blocked on a half-written chunk.
- parameters: one shared-memory float32 vector plus a version under a sequence lock
  (:class:`SharedParams`). The learner writes every ``publish_period`` updates; actors
  poll the version every ``param_sync_period`` steps and copy only when it is newer.
- evaluation (``eval.separate_process``): an :class:`EvalProcess` gets the learner's
  newest parameters with each request over a pipe and returns the episode returns, while
  learning goes on. It is started once every actor has delivered a chunk (or the first
  evaluation is due), so that its start-up does not delay the actors'.

Supervision: an actor process that dies is restarted (``actor_restarts``) with a fresh
pipe. SIGINT/SIGTERM stop the run gracefully: actors are told to stop, joined (killed
after a grace period), their inboxes drained (counted as ``dropped``), a final checkpoint
and ``summary.json`` are written. Actors exit on their own if the learner process dies
(their ``send`` fails, or they notice they were re-parented: :class:`ParentWatch`).
"""

from __future__ import annotations

import collections
import logging
import queue as queue_mod
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distdqn.config import ExperimentConfig
from distdqn.core import NonFiniteLossError, flat_params
from distdqn.envs import EnvSpaces
from distdqn.program import build_actor, build_evaluator, build_network, frame_dedup_enabled
from distdqn.runtime.common import Coordinator, RunAborted, StopRequest
from distdqn.runtime.learner_procs import RemoteLearners
from distdqn.runtime.processes import ParentWatch, expected_parent, process_context

log = logging.getLogger(__name__)

INBOX_CHUNKS = 1
"""Received chunks buffered per actor in the learner process (plus what the pipe holds,
about one more): with chunks of 256 transitions a second one mostly added parameter lag
(make train: about 28 vs 34 published versions early in the run)."""
JOIN_GRACE_S = 10.0


class SharedParams:
    """A flat float32 parameter vector in shared memory with a version, under a sequence lock.

    The writer makes the sequence odd, writes, stores the version, makes it even again.
    A reader retries if it saw an odd sequence or the sequence changed during its copy, so
    it never returns a torn vector. One writer (the learner), many readers (actors).
    """

    def __init__(self, ctx: Any, num_params: int):
        self.num_params = int(num_params)
        self._buf = ctx.RawArray("f", num_params)
        self._seq = ctx.RawValue("q", 0)
        self._version = ctx.RawValue("q", -1)

    def _view(self) -> np.ndarray:
        return np.frombuffer(self._buf, dtype=np.float32)

    def write(self, version: int, flat: np.ndarray) -> None:
        self._seq.value += 1
        self._view()[...] = flat
        self._version.value = version
        self._seq.value += 1

    def version(self) -> int:
        return int(self._version.value)

    def read(self, newer_than: int = -1) -> tuple[int, np.ndarray] | None:
        """``(version, copy)`` if the published version is newer than ``newer_than``, else None."""
        view = self._view()
        while True:
            s1 = self._seq.value
            if s1 % 2:
                time.sleep(0)
                continue
            v = int(self._version.value)
            if v <= newer_than:
                return None
            out = view.copy()
            if self._seq.value == s1:
                return v, out


class ActorLoop:
    """An actor plus its parameter syncing: what an actor process does per step."""

    def __init__(self, actor_id: int, generation: int, cfg: ExperimentConfig, spaces: EnvSpaces,
                 params: SharedParams):
        self.actor = build_actor(cfg, spaces, actor_id, generation)
        self.params = params

    def tick(self) -> Any:
        """Sync parameters if due, take one vector step; a chunk when one is ready, else None."""
        self.actor.maybe_sync(self.params.read)
        return self.actor.step()

    def close(self) -> None:
        self.actor.close()


def actor_main(
    actor_id: int,
    generation: int,
    cfg: ExperimentConfig,
    spaces: EnvSpaces,
    params: SharedParams,
    out_conn: Any,
    stop_event: Any,
    parent_pid: int | None,
) -> None:
    """Body of an actor process: sync parameters, step, send chunks, until told to stop
    (or until the learner process is gone; ``parent_pid`` as for :class:`ParentWatch`)."""
    parent = ParentWatch(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the learner process coordinates shutdown
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format=f"[actor {actor_id}] %(levelname)s %(message)s")
    loop = ActorLoop(actor_id, generation, cfg, spaces, params)
    while params.version() < 0 and not stop_event.is_set():  # the learner side is being built
        if parent.gone():
            return
        time.sleep(0.01)
    steps = 0
    try:
        while True:
            if steps % 16 == 0:  # the shared event costs a lock per look
                if stop_event.is_set():
                    return
                if steps % 256 == 0 and parent.gone():
                    return  # the learner process is gone: do not linger as an orphan
            chunk = loop.tick()
            steps += 1
            if chunk is not None:
                try:
                    out_conn.send(chunk)  # blocks while the learner is not taking chunks
                except OSError:  # BrokenPipeError: the learner process is gone
                    return
    finally:
        loop.close()
        out_conn.close()


def evaluator_main(cfg: ExperimentConfig, spaces: EnvSpaces, conn: Any) -> None:
    """Body of the evaluator process: ``(index, params, episodes, env_steps)`` requests in,
    ``(returns, env_steps)`` out, until ``None`` or end-of-file."""
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
            returns = evaluator.evaluate(params, episodes)
            try:
                conn.send((returns, env_steps))
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

    def poll(self) -> tuple[np.ndarray, int] | None:
        """``(returns, env_steps)`` of the finished evaluation, or None."""
        if not self.busy:
            return None
        try:
            if not self._conn.poll():
                if not self._proc.is_alive():
                    self._lost()
                return None
            returns, env_steps = self._conn.recv()
        except (EOFError, OSError):
            self._lost()
            return None
        self.busy = False
        return returns, env_steps

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


def _receive(conn: Any, inbox: queue_mod.Queue, halt: threading.Event, arrived: threading.Event) -> None:
    """Receiver thread: pipe -> inbox until end-of-file (the actor exited or died); sets
    ``arrived`` after each chunk (the main loop sleeps on it when it has nothing to do)."""
    try:
        while True:
            chunk = conn.recv()
            while True:
                try:
                    inbox.put(chunk, timeout=0.1)
                    arrived.set()
                    break
                except queue_mod.Full:
                    if halt.is_set():
                        return
    except (EOFError, OSError):
        return
    finally:
        conn.close()


class _ActorHandle:
    def __init__(self, actor_id: int):
        self.actor_id = actor_id
        self.generation = 0
        self.proc: Any = None
        self.inbox: queue_mod.Queue | None = None
        self.thread: threading.Thread | None = None
        self.delivered = False  # a chunk of this actor reached the replay


def run_local(
    cfg: ExperimentConfig,
    spaces: EnvSpaces,
    run_dir: Path,
    resume: bool = False,
    collect_only: bool = False,
) -> dict[str, Any]:
    """Train with ``cfg.actor.num_actors`` actor processes. Returns the summary.

    Args:
        collect_only: actors collect and the learner only inserts (benchmarking the
            collection path); requires ``replay.samples_per_insert == 0``.
    """
    if collect_only and cfg.replay.samples_per_insert != 0:
        raise ValueError("collect_only needs replay.samples_per_insert=0 (no rate limiting)")
    ctx = process_context()
    remote_learning = cfg.preset in ("gorila", "sync") and not collect_only
    stop_event = ctx.Event()
    handles = [_ActorHandle(i) for i in range(cfg.actor.num_actors)]
    halt = threading.Event()
    arrived = threading.Event()  # a chunk reached an inbox
    shared = SharedParams(ctx, int(flat_params(build_network(cfg, spaces)).size))
    pipe_bytes = chunk_bytes(cfg, spaces)

    def attach(h: _ActorHandle, reader: Any, proc: Any) -> None:
        """Receive a process's chunks into the handle's inbox (the process may be a colocated worker)."""
        h.proc = proc
        h.inbox = queue_mod.Queue(maxsize=INBOX_CHUNKS)
        h.thread = threading.Thread(target=_receive, args=(reader, h.inbox, halt, arrived),
                                    name=f"distdqn-recv-{h.actor_id}", daemon=True)
        h.thread.start()

    def start(h: _ActorHandle) -> None:
        reader, writer = ctx.Pipe(duplex=False)
        _size_pipe(reader, pipe_bytes)
        proc = ctx.Process(
            target=actor_main,
            args=(h.actor_id, h.generation, cfg, spaces, shared, writer, stop_event, expected_parent(ctx)),
            name=f"distdqn-actor-{h.actor_id}",
            daemon=True,
        )
        proc.start()  # the handle keeps only a started process (shutdown joins it)
        writer.close()  # only the actor holds the write end: its exit means EOF for us
        attach(h, reader, proc)

    # A fresh apex run starts its actors before building the learner side: they wait for
    # the first parameters, and their start-up (building envs and tracing the network, or
    # importing torch too where children are spawned) overlaps the learner side's. A
    # resumed run needs the checkpoint's actor generations first; gorila and sync start
    # their learner processes first, as before.
    early_actors = not resume and not cfg.colocate and not remote_learning
    if early_actors:
        for h in handles:
            start(h)
    try:
        co = Coordinator(cfg, spaces, run_dir, deterministic=False, resume=resume,
                         in_process_learners=not remote_learning)
    except BaseException:
        _stop_unstarted(handles, stop_event)
        raise
    assert co.ps.num_params == shared.num_params, "shared parameter vector and network disagree"
    shared.write(co.ps.version, co.current_params())
    remote: RemoteLearners | None = None
    target_shared: SharedParams | None = None
    if remote_learning:
        if co.ps.gradient_mode:
            target_shared = SharedParams(ctx, co.ps.num_params)
            target_shared.write(*co.ps.get_target())
        remote = RemoteLearners(ctx, cfg, spaces, shared, target_shared, stop_event,
                                on_chunk_pipe=lambda rank, reader, proc: attach(handles[rank], reader, proc))
    if co.restored_extra:
        for h, g in zip(handles, co.restored_extra.get("actor_generations", [])):
            h.generation = int(g) + 1  # resumed actors explore with fresh seeds

    stop = StopRequest()
    stop.install()
    error: BaseException | None = None
    chunk_size = cfg.actor.chunk_size
    evaluator: EvalProcess | None = None
    try:
        # The evaluator process starts once every actor has delivered a chunk (or the first
        # evaluation is due): started together with the actors, its imports took the CPU
        # they needed to start, and the first chunk came 1.5 s later on 2 cores.
        evaluator_wanted = cfg.eval.separate_process and cfg.eval.eval_period > 0 and not collect_only
        if remote is not None:
            remote.start(co.current_params())
        if not cfg.colocate and not early_actors:  # colocated actors live in the learner workers
            for h in handles:
                start(h)
        next_supervise = time.perf_counter()
        # About 8 updates between looks at the inboxes (an apex step takes batches_per_sample).
        learn_steps_per_pass = max(1, 8 // cfg.learner.batches_per_sample)
        restart_times: collections.deque[float] = collections.deque()
        rr = 0
        while not stop.flag:
            progressed = False
            arrived.clear()
            # 1. experience in, as far as the rate limiter allows
            for k in range(len(handles)):
                h = handles[(rr + k) % len(handles)]
                if not co.can_insert(chunk_size):
                    break
                try:
                    chunk = h.inbox.get_nowait()
                except queue_mod.Empty:
                    continue
                co.ingest(chunk)
                h.delivered = progressed = True
            rr += 1
            if evaluator_wanted and evaluator is None and (all(h.delivered for h in handles) or co.eval_due()):
                evaluator = EvalProcess(ctx, cfg, spaces)
            # 2. learning, as far as the rate limiter allows
            if remote is not None:
                progressed |= remote.feed(co.replay) > 0
                for reply in remote.results():
                    _handle_reply(reply, co, shared, target_shared)
                    progressed = True
            elif not collect_only:
                published = False
                for _ in range(learn_steps_per_pass):
                    if not co.can_learn():
                        break
                    published |= co.learn_step()
                    progressed = True
                if published:
                    shared.write(co.ps.version, co.ps.get_params()[1])
            # 3. bookkeeping
            now = time.perf_counter()
            if now >= next_supervise:
                next_supervise = now + 0.2
                for h in handles if not cfg.colocate else []:
                    if not h.proc.is_alive() and not stop.flag:
                        restart_times.append(now)
                        while restart_times and restart_times[0] < now - CRASH_LOOP_WINDOW_S:
                            restart_times.popleft()
                        if len(restart_times) > CRASH_LOOP_RESTARTS:
                            raise ActorCrashLoopError(
                                f"actor processes keep dying ({len(restart_times)} restarts in the last "
                                f"{CRASH_LOOP_WINDOW_S:.0f} s; actor {h.actor_id} exit code {h.proc.exitcode}); "
                                "see the actor errors above")
                        co.c.actor_restarts += 1
                        log.warning("actor %d died (exit code %s); restarting it (restart %d)",
                                    h.actor_id, h.proc.exitcode, co.c.actor_restarts)
                        h.proc.join(timeout=0)
                        _drain(h, co)
                        h.generation += 1
                        start(h)
                if remote is not None:
                    for rank in remote.dead():
                        if co.ps.gradient_mode:
                            co.c.learner_restarts += 1
                            log.warning("learner %d died; restarting it", rank)
                            if cfg.colocate:
                                co.c.actor_restarts += 1
                                _drain(handles[rank], co)
                            remote.restart(rank, co.current_params())
                        else:
                            raise LearnerLostError(f"learner {rank} died; synchronous learners cannot continue "
                                                   "without it (its peers would wait in the collective)")
            reason = co.tick(lambda: {"actor_generations": [h.generation for h in handles]},
                             evaluator if evaluator is not None and evaluator.alive else None)
            if reason is not None:
                stop.set(reason)
                break
            if not progressed:
                # Nothing to do until a chunk arrives (remote learners' replies are polled).
                if remote is None:
                    arrived.wait(IDLE_WAIT_S)
                else:
                    time.sleep(0.0005)
    except (NonFiniteLossError, RunAborted) as exc:
        error, stop.reason = exc, f"error: {exc}"
    except KeyboardInterrupt:
        stop.reason = "interrupted"
    finally:
        stop.restore()
        if evaluator is not None:
            evaluator.close()
        if remote is not None:
            remote.stop()
            for reply in remote.results():
                if "error" not in reply:
                    _handle_reply(reply, co, shared, target_shared)
        _shutdown(handles, stop_event, halt, co)
    co.stop_reason = stop.reason
    co.checkpoint({"actor_generations": [h.generation for h in handles]})
    if error is None and co.stop_reason != "target_return":
        co.evaluate()
    summary = co.finish()
    if error is not None:
        raise error
    return summary


PIPE_MAX_BYTES = 1 << 20
"""Largest actor pipe asked for (Linux's default ``/proc/sys/fs/pipe-max-size``)."""


def chunk_bytes(cfg: ExperimentConfig, spaces: EnvSpaces) -> int:
    """About the pickled size of the largest chunk an actor sends (``chunk_size + envs_per_actor
    * n_step`` transitions; frames instead of stacks with frame deduplication), in bytes."""
    item = np.dtype(spaces.obs_dtype).itemsize
    obs = int(np.prod(spaces.obs_shape)) * item
    per = int(np.prod(spaces.obs_shape[1:])) * item + 40 if frame_dedup_enabled(cfg, spaces) else 2 * obs + 32
    return (cfg.actor.chunk_size + cfg.env.envs_per_actor * cfg.actor.n_step) * per + 4096


def _size_pipe(conn: Any, nbytes: int) -> None:
    """Size the OS pipe buffer to hold one chunk (``nbytes``; at least a page, at most
    :data:`PIPE_MAX_BYTES`): an actor's send then is one write that need not wait for the
    learner process to read, while the inbox, not the kernel, holds any backlog (less
    parameter lag, fewer transitions dropped at shutdown). A 4 KiB pipe split CartPole's
    chunks into several writes, each waiting on the reader. Best effort: a no-op where
    unsupported."""
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, int(min(max(nbytes, 4096), PIPE_MAX_BYTES)))
    except (ImportError, AttributeError, OSError):
        pass


class LearnerLostError(RunAborted):
    """A learner process died and the topology cannot replace it."""


class ActorCrashLoopError(RunAborted):
    """Actor processes keep dying right after being restarted."""


CRASH_LOOP_RESTARTS = 10
IDLE_WAIT_S = 0.005
"""Longest idle wait of the main loop for a chunk (bounds the delay of periodic duties)."""
CRASH_LOOP_WINDOW_S = 60.0


def _handle_reply(reply: dict[str, Any], co: Coordinator, shared: SharedParams, target: SharedParams | None) -> None:
    """Apply one learner process's reply: priorities, and gradients (gorila) or reported
    parameters (sync)."""
    if "error" in reply:
        raise NonFiniteLossError(f"learner {reply['rank']}: {reply['error']}")
    co.replay.update_priorities(reply["keys"], reply["td_abs"])
    co.learn_metrics = reply["metrics"]
    co.note_learner_reply(int(reply["rank"]), reply["metrics"])
    if "grads" in reply:
        result = co.ps.apply_gradients(reply["grads"], reply["version"])
        co.remote_updates = co.ps.applied_updates
        if result.applied:
            shared.write(co.ps.version, co.ps.get_params()[1])
            got = co.ps.get_target(newer_than=target.version()) if target is not None else None
            if got is not None:
                target.write(*got)
        return
    if reply["rank"] == 0:
        co.remote_updates = int(reply["updates"])
    if "params" in reply:
        co.ps.set_params(reply["params"])
        shared.write(co.ps.version, reply["params"])


def _stop_unstarted(handles: list[_ActorHandle], stop_event: Any) -> None:
    """Stop actor processes started before the learner side failed to build (they are still
    waiting for their first parameters, so nothing is in flight)."""
    stop_event.set()
    for h in handles:
        if h.proc is not None:
            h.proc.join(timeout=JOIN_GRACE_S)
            if h.proc.is_alive():
                h.proc.kill()
                h.proc.join(timeout=5)


def _shutdown(handles: list[_ActorHandle], stop_event: Any, halt: threading.Event, co: Coordinator) -> None:
    """Stop every actor process; drain their inboxes (counted as dropped); kill stragglers."""
    stop_event.set()
    deadline = time.perf_counter() + JOIN_GRACE_S
    while time.perf_counter() < deadline:
        for h in handles:
            _drain(h, co)
        if all(h.proc is None or not h.proc.is_alive() for h in handles):
            break
        time.sleep(0.01)
    for h in handles:
        if h.proc is not None and h.proc.is_alive():
            log.warning("actor %d did not stop in %.0fs; killing it", h.actor_id, JOIN_GRACE_S)
            h.proc.kill()
        if h.proc is not None:
            h.proc.join(timeout=5)
    # Every actor is gone, so every receiver sees end-of-file once its pipe is empty.
    deadline = time.perf_counter() + 5.0
    while any(h.thread is not None and h.thread.is_alive() for h in handles) and time.perf_counter() < deadline:
        for h in handles:
            _drain(h, co)
        time.sleep(0.01)
    halt.set()
    for h in handles:
        if h.thread is not None:
            h.thread.join(timeout=1)
        _drain(h, co)


def _drain(h: _ActorHandle, co: Coordinator) -> None:
    if h.inbox is None:
        return
    while True:
        try:
            chunk = h.inbox.get_nowait()
        except queue_mod.Empty:
            return
        co.drop(len(chunk))
