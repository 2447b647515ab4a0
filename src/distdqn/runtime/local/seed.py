"""SEED RL on the local runtime: env-worker processes and one inference-server process
(:class:`~distdqn.roles.inference.InferenceServer`) beside the learner.

Transport:

- Each env worker's observations, rewards, episode ends and actions live in one
  preallocated shared-memory block (:class:`WorkerBlock`, one region per half); only
  10-byte messages (kind, half, worker generation) travel on the worker's duplex pipe, as
  raw bytes (no pickling per step).
- The server sends the chunks it builds down a pipe to the driver, as an actor does: the
  driver's :class:`SeedPool` is an :class:`~distdqn.runtime.local.actors.ActorPool` whose
  one "actor" is the server, so the receiver thread, the inbox, the rate limiter's
  back-pressure and the graceful drain are the actors' own.

The server batches dynamically: a forward pass runs once ``inference.max_batch``
observations wait, or once the oldest request has waited ``inference.max_wait_ms``.

Failures (the driver supervises every process):

- An env worker that dies is restarted with a new generation (its run id). Its first
  message (``HELLO``) makes the server close the worker's slots: their complete items are
  sent, their open n-step windows counted in ``dropped``; stale messages of the old
  generation are ignored on both sides.
- A server that dies is restarted, and every env worker with it (their slots' state died
  with the server; counted in ``actor_restarts``, like a dead actor). Restarting keeps the
  run going, as for actors; the server holds nothing the learner needs.
"""

from __future__ import annotations

import logging
import struct
import time
from multiprocessing.connection import wait as wait_any
from typing import Any, Callable

import numpy as np

from distdqn.config import ExperimentConfig, inference_batch
from distdqn.envs import EnvSpaces
from distdqn.program import build_env_worker, build_inference_server
from distdqn.roles.env_worker import HalfStep
from distdqn.roles.inference import DynamicBatcher
from distdqn.runtime.local.actors import JOIN_GRACE_S, ActorHandle, ActorPool
from distdqn.runtime.local.processes import ParentWatch, child_setup, expected_parent, wait_for_params
from distdqn.runtime.local.shared import SharedParams

log = logging.getLogger(__name__)

HELLO, GO, FIRST, STEP, ACT = 1, 2, 3, 4, 5
_MSG = struct.Struct("<BBq")
LATENCY_RING = 256
"""Round trips each worker keeps for the latency percentiles."""
POLL_S = 0.1
STATS_PERIOD_S = 0.5


class WorkerBlock:
    """The shared-memory layout of one env worker: per half, ``next_obs``/``reset_obs``
    ``[H, *obs_shape]``, ``reward`` float64, ``terminated``/``truncated`` bool, ``actions``
    int64, the ended episodes' ``ep_return``/``ep_length`` and their count, flags, when the
    server sent the actions (``replied``, ``time.perf_counter`` seconds); and the worker's
    timing (``latency`` ring in seconds, ``env_time``/``wall`` seconds)."""

    def __init__(self, splits: int, half_envs: int, obs_shape: tuple[int, ...], obs_dtype: Any):
        h = half_envs
        self.splits = splits
        self._fields: list[tuple[str, tuple[int, ...], Any]] = []
        for k in range(splits):
            self._fields += [(f"next_obs{k}", (h, *obs_shape), obs_dtype), (f"reset_obs{k}", (h, *obs_shape), obs_dtype),
                             (f"reward{k}", (h,), np.float64), (f"terminated{k}", (h,), np.bool_),
                             (f"truncated{k}", (h,), np.bool_), (f"actions{k}", (h,), np.int64),
                             (f"ep_return{k}", (h,), np.float64), (f"ep_length{k}", (h,), np.int64),
                             (f"flags{k}", (3,), np.int64),  # episodes ended, reset rows valid, restarted
                             (f"replied{k}", (1,), np.float64)]  # when the server sent the actions
        self._fields += [("latency", (LATENCY_RING,), np.float64), ("timing", (3,), np.float64)]  # n, env, wall
        self.nbytes = 0
        self._offsets = []
        for _, shape, dtype in self._fields:
            self._offsets.append(self.nbytes)
            n = int(np.prod(shape)) * np.dtype(dtype).itemsize
            self.nbytes += (n + 7) // 8 * 8

    def views(self, raw: Any) -> dict[str, np.ndarray]:
        """Name -> numpy view of the block ``raw`` (a ``RawArray`` of :attr:`nbytes` bytes)."""
        buf = np.frombuffer(raw, dtype=np.uint8)
        out = {}
        for (name, shape, dtype), off in zip(self._fields, self._offsets):
            n = int(np.prod(shape)) * np.dtype(dtype).itemsize
            out[name] = buf[off : off + n].view(dtype).reshape(shape)
        return out


def write_step(v: dict[str, np.ndarray], h: int, step: HalfStep) -> None:
    v[f"next_obs{h}"][...] = step.next_obs
    v[f"reward{h}"][...] = step.reward
    v[f"terminated{h}"][...] = step.terminated
    v[f"truncated{h}"][...] = step.truncated
    n = len(step.returns)
    v[f"ep_return{h}"][:n] = step.returns
    v[f"ep_length{h}"][:n] = step.lengths
    if step.reset_obs is not None:
        v[f"reset_obs{h}"][...] = step.reset_obs
    v[f"flags{h}"][...] = (n, step.reset_obs is not None, step.restarted)


def read_step(v: dict[str, np.ndarray], h: int) -> HalfStep:
    """A copy of half ``h``'s last result (the worker overwrites the block next step)."""
    n, has_reset, restarted = (int(x) for x in v[f"flags{h}"])
    return HalfStep(v[f"next_obs{h}"].copy(), v[f"reward{h}"].copy(), v[f"terminated{h}"].copy(),
                    v[f"truncated{h}"].copy(), v[f"reset_obs{h}"].copy() if has_reset else None,
                    v[f"ep_return{h}"][:n].tolist(), v[f"ep_length{h}"][:n].tolist(), bool(restarted))


def _stopping(stop_event: Any, parent: ParentWatch) -> bool:
    return stop_event.is_set() or parent.gone()


def env_worker_main(worker_id: int, generation: int, cfg: ExperimentConfig, block: WorkerBlock, raw: Any,
                    conn: Any, stop_event: Any, parent_pid: int | None) -> None:
    """Body of an env-worker process: announce this generation, then step whichever half
    the server sends actions for, until told to stop."""
    parent = ParentWatch(parent_pid)
    child_setup(f"env worker {worker_id}")
    v = block.views(raw)
    worker = build_env_worker(cfg, worker_id, generation)
    try:
        conn.send_bytes(_MSG.pack(HELLO, 0, generation))
        while True:  # the server first closes what the previous generation left
            if not conn.poll(POLL_S):
                if _stopping(stop_event, parent):
                    return
                continue
            kind, _, g = _MSG.unpack(conn.recv_bytes())
            if kind == GO and g == generation:
                break
        sent = [0.0] * block.splits
        for h in range(block.splits):
            v[f"next_obs{h}"][...] = worker.reset(h)
            sent[h] = time.perf_counter()
            conn.send_bytes(_MSG.pack(FIRST, h, generation))
        t_start, env_time, n = time.perf_counter(), 0.0, 0
        timing, latency = v["timing"], v["latency"]
        while True:
            waiting = not conn.poll()
            if waiting and not conn.poll(POLL_S):
                if _stopping(stop_event, parent):
                    return
                continue
            kind, h, g = _MSG.unpack(conn.recv_bytes())
            if kind != ACT or g != generation:
                continue  # meant for an earlier generation of this worker
            t0 = time.perf_counter()
            # The round trip ends when the actions arrive: now, if this worker was waiting for
            # them; when the server sent them, if they were already here (the worker was
            # stepping its other half, which is no part of the inference's round trip).
            # perf_counter is CLOCK_MONOTONIC, one clock for every process of the machine.
            latency[n % LATENCY_RING] = (t0 if waiting else float(v[f"replied{h}"][0])) - sent[h]
            step = worker.step(h, v[f"actions{h}"].copy())
            t1 = time.perf_counter()
            env_time += t1 - t0
            write_step(v, h, step)
            n += 1
            timing[...] = (n, env_time, t1 - t_start)
            sent[h] = time.perf_counter()
            conn.send_bytes(_MSG.pack(STEP, h, generation))
            if n % 32 == 0 and _stopping(stop_event, parent):
                return
    except (OSError, EOFError):  # the server's end is gone
        return
    finally:
        worker.close()


class _Server:
    """The inference-server process's loop state (see :func:`seed_server_main`)."""

    def __init__(self, generation: int, cfg: ExperimentConfig, spaces: EnvSpaces, block: WorkerBlock, raws: list,
                 conns: list, out_conn: Any):
        self.cfg, self.block, self.conns, self.out_conn = cfg, block, conns, out_conn
        self.splits = cfg.inference.splits
        self.batcher = DynamicBatcher(inference_batch(cfg), cfg.inference.max_wait_ms / 1000.0)
        self.server = build_inference_server(cfg, spaces, generation)
        self.views = [block.views(r) for r in raws]
        self.gens = [-1] * len(conns)
        self._next_stats = 0.0
        self._stats: dict[str, float] = {}

    def send(self, chunk: Any) -> None:
        if chunk is None:
            return
        now = time.perf_counter()
        if now >= self._next_stats:
            self._next_stats = now + STATS_PERIOD_S
            self._stats = self._timing()
        chunk.stats = dict(self._stats, inference_batch=self.server.mean_batch())
        self.out_conn.send(chunk)  # blocks while the learner is not taking chunks

    def _timing(self) -> dict[str, float]:
        lat, env, wall = [], 0.0, 0.0
        for v in self.views:
            n, e, w = v["timing"]
            lat.append(v["latency"][: int(min(n, LATENCY_RING))])
            env, wall = env + e, wall + w
        lats = np.concatenate(lat) if lat else np.zeros(0)
        out = {"env_step_share": env / wall if wall > 0 else None}
        if len(lats):
            p50, p99 = np.percentile(lats, [50, 99]) * 1000.0
            out.update(inference_latency_ms_p50=float(p50), inference_latency_ms_p99=float(p99))
        return out

    def handle(self, w: int, msg: bytes) -> None:
        kind, h, g = _MSG.unpack(msg)
        k = w * self.splits + h
        if kind == HELLO:  # a new generation of worker w: close what the old one left
            for j in range(self.splits):
                self.batcher.discard(w * self.splits + j)
                self.send(self.server.close(w * self.splits + j))
            self.gens[w] = g
            self.conns[w].send_bytes(_MSG.pack(GO, 0, g))
        elif g != self.gens[w]:
            return  # sent by a generation that is gone
        elif kind == FIRST:
            self.server.open(k, g, self.views[w][f"next_obs{h}"].copy())
            self.batcher.add(k, self.server.num_envs(k), time.perf_counter())
        elif kind == STEP:
            self.send(self.server.observe(k, read_step(self.views[w], h)))
            self.batcher.add(k, self.server.num_envs(k), time.perf_counter())

    def serve(self) -> None:
        """Run forward passes while one is due (:class:`DynamicBatcher`); send the actions."""
        while self.batcher.due(time.perf_counter()):
            group = self.batcher.take()
            for k, actions in zip(group, self.server.infer(group)):
                w, h = divmod(k, self.splits)
                self.views[w][f"actions{h}"][...] = actions
                self.views[w][f"replied{h}"][0] = time.perf_counter()
                self.conns[w].send_bytes(_MSG.pack(ACT, h, self.gens[w]))

    def timeout(self) -> float:
        return self.batcher.timeout(time.perf_counter(), POLL_S)

    def flush_all(self) -> None:
        for k in range(len(self.server.slots)):
            self.send(self.server.flush(k))


def seed_server_main(generation: int, cfg: ExperimentConfig, spaces: EnvSpaces, params: SharedParams,
                     block: WorkerBlock, raws: list, conns: list, out_conn: Any, stop_event: Any,
                     parent_pid: int | None) -> None:
    """Body of the inference-server process: requests in, batched passes, actions out,
    chunks to the driver; on a graceful stop every slot's complete items are sent."""
    parent = ParentWatch(parent_pid)
    child_setup("inference")
    s = _Server(generation, cfg, spaces, block, raws, conns, out_conn)
    index = {id(c): w for w, c in enumerate(conns)}
    if not wait_for_params(params, stop_event, parent):
        return
    loops = 0
    try:
        while True:
            loops += 1
            got = params.read(s.server.version)
            if got is not None:
                s.server.set_params(*got)
            ready = wait_any(conns, s.timeout())
            for c in ready:
                w = index[id(c)]
                while c.poll():
                    s.handle(w, c.recv_bytes())
            s.serve()
            if (not ready or loops % 16 == 0) and _stopping(stop_event, parent):
                if stop_event.is_set():
                    s.flush_all()
                return
    except (OSError, EOFError):  # the driver is gone
        return
    finally:
        out_conn.close()


class SeedPool(ActorPool):
    """The driver's side of SEED on the local runtime: the server process (the pool's one
    "actor", whose chunks arrive as an actor's do) and the env-worker processes, each
    supervised. The workers' shared-memory blocks live as long as the pool."""

    def __init__(self, ctx: Any, cfg: ExperimentConfig, spaces: EnvSpaces, params: SharedParams,
                 on_drop: Callable[[int], None]):
        super().__init__(ctx, cfg, spaces, params, on_drop)
        splits = cfg.inference.splits
        self.handles = [ActorHandle(0)]
        self.handles[0].label = "inference server"
        self.workers = [ActorHandle(w) for w in range(cfg.actor.num_actors)]
        for h in self.workers:
            h.label = f"env worker {h.actor_id}"
        self.inbox_chunks = self.per_take = cfg.actor.num_actors * splits  # one per slot
        # The server's pipe carries every slot's chunks: room for one per slot, so that a send
        # does not wait for the receiver thread (which shares the driver's interpreter).
        self._pipe_bytes *= self.inbox_chunks
        self.block = WorkerBlock(splits, cfg.env.envs_per_actor // splits, tuple(spaces.obs_shape), spaces.obs_dtype)
        self.raws = [ctx.RawArray("b", self.block.nbytes) for _ in self.workers]
        self._worker_ends: list[Any] = []

    def supervised(self) -> list[ActorHandle]:
        return [*self.handles, *self.workers]

    def start(self, h: ActorHandle) -> None:
        if h in self.workers:
            self._start_worker(h)
        else:
            super().start(h)

    def _process(self, h: ActorHandle, writer: Any) -> tuple[Callable[..., None], tuple, str]:
        # A (re)started server starts over with new pipes and new worker generations.
        self._stop_workers()
        pairs = [self.ctx.Pipe(duplex=True) for _ in self.workers]
        self._worker_ends = [b for _, b in pairs]
        for w in self.workers:
            if w.proc is not None:
                w.generation += 1
            self._start_worker(w)
        args = (h.generation, self.cfg, self.spaces, self.params, self.block, self.raws, [a for a, _ in pairs],
                writer, self.stop_event, expected_parent(self.ctx))
        return seed_server_main, args, "distdqn-inference"

    def _start_worker(self, w: ActorHandle) -> None:
        w.proc = self.ctx.Process(
            target=env_worker_main,
            args=(w.actor_id, w.generation, self.cfg, self.block, self.raws[w.actor_id],
                  self._worker_ends[w.actor_id], self.stop_event, expected_parent(self.ctx)),
            name=f"distdqn-env-worker-{w.actor_id}", daemon=True)
        w.proc.start()

    def _stop_workers(self, grace: float = 0.0) -> None:
        deadline = time.perf_counter() + grace
        for w in self.workers:
            if w.proc is None:
                continue
            w.proc.join(timeout=max(0.0, deadline - time.perf_counter()))
            if w.proc.is_alive():
                if grace:
                    log.warning("%s did not stop in %.0fs; killing it", w.label, grace)
                w.proc.kill()
                w.proc.join(timeout=5)

    def stop_unstarted(self) -> None:
        super().stop_unstarted()
        self._stop_workers(JOIN_GRACE_S)

    def shutdown(self, keep: Callable[[Any], None] | None = None) -> None:
        super().shutdown(keep)
        self._stop_workers(JOIN_GRACE_S)
