"""SEED RL on the Ray runtime: env workers as Ray actors (on any node) and the inference
server as an actor role beside the learner, calling them asynchronously.

- :class:`EnvWorkerRole` answers ``step(half, actions)`` with ``(incarnation, HalfStep,
  timing)``; a half it has not reset in this incarnation (first contact, or the worker was
  restarted by Ray) is reset instead and answered with its first observations.
- :class:`SeedServerRole` is an :class:`~distdqn.runtime.ray.roles.ActorRole` whose chunks
  come from :class:`RaySeedLoop`: the :class:`~distdqn.roles.inference.InferenceServer`
  with one call in flight per half, batched dynamically
  (:class:`~distdqn.roles.inference.DynamicBatcher`). Inserting chunks, pulling
  parameters and the graceful stop are the actor role's own.
- A worker lost while a call was in flight is called again once Ray has restarted it; the
  first answer of a new incarnation closes the half's slot (complete items kept, open
  n-step windows counted in ``dropped``) and opens it anew. A restarted server asks every
  half for fresh observations.
"""

from __future__ import annotations

import collections
import time
import warnings
from typing import Any

import numpy as np

from distdqn.config import ExperimentConfig, inference_batch
from distdqn.core import Chunk
from distdqn.envs import EnvSpaces
from distdqn.program import build_env_worker, build_inference_server
from distdqn.roles.env_worker import HalfStep
from distdqn.roles.inference import DynamicBatcher
from distdqn.runtime.ray.common import LOST_ERRORS, RemoteRole, incarnation, role_setup
from distdqn.runtime.ray.roles import ActorRole

RETRY_S = 0.2
IDLE_S = 0.05
LATENCY_WINDOW = 512


def _restarted() -> bool:
    import ray

    with warnings.catch_warnings():  # Ray 2.x warns about its own use of a deprecated field here
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


class EnvWorkerRole:
    """An :class:`~distdqn.roles.env_worker.EnvWorker` as a Ray role."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, worker_id: int):
        role_setup(1)
        self.incarnation = incarnation()
        generation = (self.incarnation & 0xFFFFFF) + 1 if _restarted() else 0
        self.worker = build_env_worker(cfg, worker_id, generation)
        self.started = [False] * cfg.inference.splits
        self._returned = [0.0] * cfg.inference.splits
        self._t0, self._env_time = time.perf_counter(), 0.0

    def step(self, half: int, actions: np.ndarray | None) -> tuple[int, HalfStep, tuple[float, float, float]]:
        """``(incarnation, result, (round trip s, env-step s, wall s))``: the half stepped
        with ``actions``, or (``actions`` None, or a half not yet reset here) reset."""
        t = time.perf_counter()
        latency = t - self._returned[half] if self.started[half] else float("nan")
        if actions is None or not self.started[half]:
            obs = self.worker.reset(half)
            self.started[half] = True
            none = np.zeros(len(obs), dtype=bool)
            out = HalfStep(obs, np.zeros(len(obs)), none, none, restarted=True)
        else:
            out = self.worker.step(half, np.asarray(actions))
        self._returned[half] = time.perf_counter()
        self._env_time += self._returned[half] - t
        return self.incarnation, out, (latency, self._env_time, self._returned[half] - self._t0)

    def stats(self) -> dict[str, Any]:
        return {"incarnation": self.incarnation, "env_steps": self.worker.env_steps}

    def halt(self, keep: bool = False) -> None:
        pass

    def stop(self) -> None:
        self.worker.close()


class RaySeedLoop:
    """The inference server and its env workers' calls; an actor role's producer
    (``tick``, ``flush_all``, ``env_steps``, ``param_version``, ``close``).

    Args:
        cfg, spaces: the experiment.
        generation: the server's (its slots' seeds follow it).
        workers: ``(host name, role name)`` of each env worker, in worker order.
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, generation: int, workers: list[tuple[str, str]]):
        import ray

        self._ray = ray
        self.splits = cfg.inference.splits
        self.server = build_inference_server(cfg, spaces, generation)
        self.workers = [RemoteRole(ray.get_actor(host), role) for host, role in workers]
        self.batcher = DynamicBatcher(inference_batch(cfg), cfg.inference.max_wait_ms / 1000.0)
        self.pending: dict[Any, int] = {}  # call in flight -> slot
        self.worker_inc: list[int | None] = [None] * len(self.server.slots)
        self.retry: dict[int, float] = {}  # slot -> when to call its lost worker again
        self.out: collections.deque[Chunk] = collections.deque()
        self.latency: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.timing: dict[int, tuple[float, float]] = {}
        for k in range(len(self.server.slots)):
            self._call(k, None)

    @property
    def param_version(self) -> int:
        return self.server.version

    @property
    def env_steps(self) -> int:
        return sum(a.env_steps for a in self.server.slots if a is not None)

    def _call(self, k: int, actions: np.ndarray | None) -> None:
        w, h = divmod(k, self.splits)
        try:
            self.pending[self.workers[w].step.remote(h, actions)] = k
        except LOST_ERRORS:
            self.retry[k] = time.perf_counter() + RETRY_S

    def tick(self, fetch: Any) -> Chunk | None:
        """One pass: newer parameters, answers in, due forward passes out; the next chunk
        built (None when none is ready)."""
        ray = self._ray
        got = fetch(self.server.version)
        if got is not None:
            self.server.set_params(*got)
        now = time.perf_counter()
        for k, when in list(self.retry.items()):
            if now >= when:
                del self.retry[k]
                self._call(k, None)
        if not self.out:
            refs = list(self.pending)
            if refs:
                ready, rest = ray.wait(refs, num_returns=1, timeout=self.batcher.timeout(now, IDLE_S))
                if ready and rest:
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                    ready += more
                for ref in ready:
                    self._arrived(ref)
            else:
                time.sleep(IDLE_S)
            while self.batcher.due(time.perf_counter()):
                group = self.batcher.take()
                for k, actions in zip(group, self.server.infer(group)):
                    self._call(k, actions)
        return self.out.popleft() if self.out else None

    def _arrived(self, ref: Any) -> None:
        k = self.pending.pop(ref)
        try:
            inc, step, (latency, env_time, wall) = self._ray.get(ref)
        except LOST_ERRORS:  # the worker died with the call; Ray restarts it
            self.batcher.discard(k)
            self.retry[k] = time.perf_counter() + RETRY_S
            return
        self.timing[k // self.splits] = (env_time, wall)
        if inc != self.worker_inc[k]:  # first contact, or a restarted worker: start the slot over
            self.worker_inc[k] = inc
            self._emit(self.server.open(k, inc & 0xFFFFFF, step.next_obs))
        else:
            if latency == latency:  # not NaN
                self.latency.append(latency)
            self._emit(self.server.observe(k, step))
        self.batcher.add(k, self.server.num_envs(k), time.perf_counter())

    def _emit(self, chunk: Chunk | None) -> None:
        if chunk is None:
            return
        env = sum(e for e, _ in self.timing.values())
        wall = sum(w for _, w in self.timing.values())
        stats: dict[str, float | None] = {"inference_batch": self.server.mean_batch(),
                                          "env_step_share": env / wall if wall > 0 else None}
        if self.latency:
            p50, p99 = np.percentile(np.asarray(self.latency), [50, 99]) * 1000.0
            stats.update(inference_latency_ms_p50=float(p50), inference_latency_ms_p99=float(p99))
        chunk.stats = stats
        self.out.append(chunk)

    def flush_all(self) -> list[Chunk]:
        """Every slot's complete items (a graceful stop), and the chunks not yet taken."""
        last = list(self.out)
        self.out.clear()
        for k in range(len(self.server.slots)):
            c = self.server.flush(k)
            if c is not None:
                last.append(c)
        return last

    def close(self) -> None:
        pass


class SeedServerRole(ActorRole):
    """The SEED inference server as an actor role (``workers``: the env workers' ``(host
    name, role name)``)."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, actor_id: int, shard: tuple[str, str],
                 ps: tuple[str, str], workers: list[tuple[str, str]]):
        self._workers = workers
        super().__init__(cfg, spaces, actor_id, shard, ps)

    def _producer(self, cfg: ExperimentConfig, spaces: EnvSpaces, actor_id: int, generation: int) -> RaySeedLoop:
        return RaySeedLoop(cfg, spaces, generation, self._workers)

    def _final_chunks(self) -> list[Chunk]:
        return self.actor.flush_all()
