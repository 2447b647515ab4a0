"""Actor processes of the local runtime and the experience they send.

- An actor process (:func:`actor_main`) syncs parameters from shared memory, steps its
  :class:`~distdqn.roles.actor.Actor` and sends whole :class:`~distdqn.core.Chunk` objects
  down its own one-way ``multiprocessing`` pipe (numpy arrays, pickled by the standard
  library).
- In the learner process a receiver thread per actor (:func:`receive`) moves them into a
  small inbox; :meth:`ActorPool.take` hands them to the replay only when the rate limiter
  allows an insert. A full inbox stops the receiver, the pipe fills and the actor blocks in
  ``send``: that is how ``samples_per_insert`` throttles collection. The learner process
  keeps no copy of the pipe's write end, so an actor that dies (even mid-message) shows up
  as end-of-file on its receiver and can never leave the learner blocked on a half-written
  chunk.
- Supervision (:meth:`ActorPool.supervise`): an actor process that dies is restarted with a
  fresh pipe and a new generation (new exploration seeds); one that keeps dying ends the
  run. Actors exit on their own when the learner process is gone (their ``send`` fails, or
  they notice they were re-parented: :class:`~distdqn.runtime.local.processes.ParentWatch`).
"""

from __future__ import annotations

import collections
import logging
import queue as queue_mod
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from distdqn.config import ExperimentConfig
from distdqn.envs import EnvSpaces
from distdqn.program import build_actor, frame_dedup_enabled
from distdqn.runtime.driver import RunAborted
from distdqn.runtime.local.processes import ParentWatch, child_setup, expected_parent, wait_for_params
from distdqn.runtime.local.shared import SharedParams

log = logging.getLogger(__name__)

INBOX_CHUNKS = 1
"""Received chunks buffered per actor in the learner process, besides the one the pipe
holds: more only adds parameter lag (see benchmarks/README.md)."""
JOIN_GRACE_S = 10.0
CRASH_LOOP_RESTARTS = 10
CRASH_LOOP_WINDOW_S = 60.0
PIPE_MAX_BYTES = 1 << 20
"""Largest actor pipe asked for (Linux's default ``/proc/sys/fs/pipe-max-size``)."""


class ActorCrashLoopError(RunAborted):
    """Actor processes keep dying right after being restarted."""


def actor_main(actor_id: int, generation: int, cfg: ExperimentConfig, spaces: EnvSpaces, params: SharedParams,
               out_conn: Any, stop_event: Any, parent_pid: int | None) -> None:
    """Body of an actor process: sync parameters, step, send chunks, until told to stop
    (or until the learner process is gone; ``parent_pid`` as for ``ParentWatch``)."""
    parent = ParentWatch(parent_pid)
    child_setup(f"actor {actor_id}")
    actor = build_actor(cfg, spaces, actor_id, generation)
    if not wait_for_params(params, stop_event, parent):
        return
    steps = 0
    try:
        while True:
            if steps % 16 == 0:  # the shared event costs a lock per look
                if stop_event.is_set():
                    _send_last(actor, out_conn)
                    return
                if steps % 256 == 0 and parent.gone():
                    return  # the learner process is gone: do not linger as an orphan
            chunk = actor.tick(params.read)
            steps += 1
            if chunk is not None:
                try:
                    out_conn.send(chunk)  # blocks while the learner is not taking chunks
                except OSError:  # BrokenPipeError: the learner process is gone
                    return
    finally:
        actor.close()
        out_conn.close()


def _send_last(actor: Any, out_conn: Any) -> None:
    """A graceful stop: send the items already complete (and the env steps taken) since the
    last chunk, so that the learner side can keep them (:meth:`ActorPool.shutdown`)."""
    chunk = actor.flush()
    if chunk is not None:
        try:
            out_conn.send(chunk)
        except OSError:  # the learner process is gone: nothing can keep it
            pass


def receive(conn: Any, inbox: queue_mod.Queue, halt: threading.Event, arrived: threading.Event) -> None:
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


def chunk_bytes(cfg: ExperimentConfig, spaces: EnvSpaces) -> int:
    """About the pickled size of the largest chunk an actor sends (``chunk_size + envs_per_actor
    * n_step`` transitions; frames instead of stacks with frame deduplication), in bytes."""
    item = np.dtype(spaces.obs_dtype).itemsize
    obs = int(np.prod(spaces.obs_shape)) * item
    per = int(np.prod(spaces.obs_shape[1:])) * item + 40 if frame_dedup_enabled(cfg, spaces) else 2 * obs + 32
    return (cfg.actor.chunk_size + cfg.env.envs_per_actor * cfg.actor.n_step) * per + 4096


def size_pipe(conn: Any, nbytes: int) -> None:
    """Size the OS pipe buffer to hold one chunk (``nbytes``; at least a page, at most
    :data:`PIPE_MAX_BYTES`): an actor's send then is one write that need not wait for the
    learner process to read, while the inbox, not the kernel, holds any backlog (less
    parameter lag, fewer items in flight at shutdown). Best effort: a no-op where unsupported."""
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, int(min(max(nbytes, 4096), PIPE_MAX_BYTES)))
    except (ImportError, AttributeError, OSError):
        pass


class ActorHandle:
    """One actor's process, its receiver thread and inbox, in the learner process."""

    def __init__(self, actor_id: int):
        self.actor_id = actor_id
        self.label = f"actor {actor_id}"
        self.generation = 0
        self.proc: Any = None
        self.inbox: queue_mod.Queue | None = None
        self.thread: threading.Thread | None = None
        self.delivered = False  # a chunk of this actor reached the replay


class ActorPool:
    """The actor processes: start, receive, hand chunks over, supervise, stop.

    Args:
        ctx: the multiprocessing context.
        cfg, spaces: the experiment.
        params: the shared parameters the actors read.
        on_drop: ``on_drop(n)`` counts items that are thrown away (an abrupt stop).
    """

    def __init__(self, ctx: Any, cfg: ExperimentConfig, spaces: EnvSpaces, params: SharedParams,
                 on_drop: Callable[[int], None]):
        self.ctx, self.cfg, self.spaces, self.params, self.on_drop = ctx, cfg, spaces, params, on_drop
        self.stop_event = ctx.Event()
        self.halt = threading.Event()
        self.arrived = threading.Event()  # a chunk reached an inbox
        self.handles = [ActorHandle(i) for i in range(cfg.actor.num_actors)]
        self._pipe_bytes = chunk_bytes(cfg, spaces)
        self._restart_times: collections.deque[float] = collections.deque()
        self._rr = 0
        self.inbox_chunks = INBOX_CHUNKS
        self.per_take = 1
        """Chunks :meth:`take` hands over from one inbox per pass."""

    def attach(self, h: ActorHandle, reader: Any, proc: Any) -> None:
        """Receive a process's chunks into the handle's inbox (the process may be a colocated worker)."""
        h.proc = proc
        h.inbox = queue_mod.Queue(maxsize=self.inbox_chunks)
        h.thread = threading.Thread(target=receive, args=(reader, h.inbox, self.halt, self.arrived),
                                    name=f"distdqn-recv-{h.actor_id}", daemon=True)
        h.thread.start()

    def start(self, h: ActorHandle) -> None:
        reader, writer = self.ctx.Pipe(duplex=False)
        size_pipe(reader, self._pipe_bytes)
        target, args, name = self._process(h, writer)
        proc = self.ctx.Process(target=target, args=args, name=name, daemon=True)
        proc.start()  # the handle keeps only a started process (shutdown joins it)
        writer.close()  # only the actor holds the write end: its exit means EOF for us
        self.attach(h, reader, proc)

    def _process(self, h: ActorHandle, writer: Any) -> tuple[Callable[..., None], tuple, str]:
        """What the process that sends ``h``'s chunks down ``writer`` runs: target, args, name."""
        return actor_main, (h.actor_id, h.generation, self.cfg, self.spaces, self.params, writer, self.stop_event,
                            expected_parent(self.ctx)), f"distdqn-actor-{h.actor_id}"

    def start_all(self) -> None:
        for h in self.handles:
            self.start(h)

    def take(self, can_insert: Callable[[], bool], ingest: Callable[[Any], None]) -> bool:
        """Hand chunks to ``ingest`` from the inboxes in turn (up to :attr:`per_take` from
        each) while ``can_insert()``; True when any."""
        took = False
        n = len(self.handles)
        for k in range(n):
            h = self.handles[(self._rr + k) % n]
            if h.inbox is None or not can_insert():
                break
            for _ in range(self.per_take):
                try:
                    chunk = h.inbox.get_nowait()
                except queue_mod.Empty:
                    break
                ingest(chunk)
                h.delivered = took = True
                if not can_insert():
                    break
        self._rr += 1
        return took

    def all_delivered(self) -> bool:
        return all(h.delivered for h in self.handles)

    def supervise(self, count_restart: Callable[[], int], keep: Callable[[Any], None] | None = None) -> None:
        """Restart actor processes that died (``count_restart()`` counts one and returns the total).
        The whole chunks a dead actor had sent go to ``keep`` (counted as dropped when None):
        its receiver reads its pipe to the end first, so only its unsent items are lost.

        Raises:
            ActorCrashLoopError: more than ``CRASH_LOOP_RESTARTS`` restarts within ``CRASH_LOOP_WINDOW_S``.
        """
        now = time.perf_counter()
        for h in self.supervised():
            if h.proc is None or h.proc.is_alive() or self.stop_event.is_set():
                continue
            self._restart_times.append(now)
            while self._restart_times and self._restart_times[0] < now - CRASH_LOOP_WINDOW_S:
                self._restart_times.popleft()
            if len(self._restart_times) > CRASH_LOOP_RESTARTS:
                raise ActorCrashLoopError(
                    f"actor processes keep dying ({len(self._restart_times)} restarts in the last "
                    f"{CRASH_LOOP_WINDOW_S:.0f} s; {h.label} exit code {h.proc.exitcode}); "
                    "see the actor errors above")
            total = count_restart()
            log.warning("%s died (exit code %s); restarting it (restart %d)", h.label, h.proc.exitcode, total)
            h.proc.join(timeout=0)
            self.collect(h, keep)
            h.generation += 1
            self.start(h)

    def supervised(self) -> list[ActorHandle]:
        """The processes :meth:`supervise` restarts (the actors)."""
        return self.handles

    def collect(self, h: ActorHandle, keep: Callable[[Any], None] | None) -> None:
        """A dead actor's last chunks: empty its inbox until its receiver has read the pipe
        to its end (a second at most; a half-written last message is discarded there)."""
        deadline = time.perf_counter() + 1.0
        while h.thread is not None and h.thread.is_alive() and time.perf_counter() < deadline:
            self.drain(h, keep)
            time.sleep(0.001)
        self.drain(h, keep)

    def drain(self, h: ActorHandle, keep: Callable[[Any], None] | None = None) -> None:
        """Empty an inbox: each chunk goes to ``keep`` (a graceful stop inserts it, past the
        rate limiter), or is counted as dropped when ``keep`` is None (the process died or
        the stop is abrupt)."""
        if h.inbox is None:
            return
        while True:
            try:
                chunk = h.inbox.get_nowait()
            except queue_mod.Empty:
                return
            if keep is None:
                self.on_drop(len(chunk))
            else:
                keep(chunk)

    def stop_unstarted(self) -> None:
        """Stop actor processes started before the learner side failed to build (they are still
        waiting for their first parameters, so nothing is in flight)."""
        self.stop_event.set()
        for h in self.handles:
            if h.proc is not None:
                h.proc.join(timeout=JOIN_GRACE_S)
                if h.proc.is_alive():
                    h.proc.kill()
                    h.proc.join(timeout=5)

    def shutdown(self, keep: Callable[[Any], None] | None = None) -> None:
        """Stop every actor process and kill stragglers. Every chunk still in a pipe or an
        inbox, and each actor's last partial chunk, goes to ``keep`` (a graceful stop), or
        is counted as dropped (``keep=None``: an abrupt stop)."""
        handles = self.handles
        self.stop_event.set()
        deadline = time.perf_counter() + JOIN_GRACE_S
        while time.perf_counter() < deadline:
            for h in handles:
                self.drain(h, keep)
            if all(h.proc is None or not h.proc.is_alive() for h in handles):
                break
            time.sleep(0.01)
        for h in handles:
            if h.proc is not None and h.proc.is_alive():
                log.warning("%s did not stop in %.0fs; killing it", h.label, JOIN_GRACE_S)
                h.proc.kill()
            if h.proc is not None:
                h.proc.join(timeout=5)
        # Every actor is gone, so every receiver sees end-of-file once its pipe is empty.
        deadline = time.perf_counter() + 5.0
        while any(h.thread is not None and h.thread.is_alive() for h in handles) and time.perf_counter() < deadline:
            for h in handles:
                self.drain(h, keep)
            time.sleep(0.01)
        self.halt.set()
        for h in handles:
            if h.thread is not None:
                h.thread.join(timeout=1)
            self.drain(h, keep)
