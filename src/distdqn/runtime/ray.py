"""Ray runtime: every role a Ray actor, on one machine or a Ray cluster.

Roles (each a plain class here, made a Ray actor by :func:`run_ray`):

- :class:`ActorRole` (one per ``actor.num_actors``, 1 CPU, optionally one unit of the
  custom resource ``ray.actor_resource``, spread over nodes): steps its vector env in a
  background thread, pulls parameters from the parameter server when its version is
  older, and inserts whole chunks of n-step transitions into its replay shard, one call
  in flight, each numbered ``(actor_id, incarnation, seq)``.
- :class:`ReplayShardRole` (``ray.replay_shards`` of them, asyncio actors): a
  :class:`ShardCore` (a :class:`~distdqn.replay.Replay` with its rate limiter, plus insert
  de-duplication and transition accounting). An insert the rate limiter refuses waits
  inside the shard until the learner has sampled enough, so the actor's call returns late:
  that is the back-pressure that keeps ``samples_per_insert``.
- :class:`LearnerRole` (``learner.num_learners``; a GPU when the cluster has one): draws
  batches from the shards, two requests in flight, each batch from one shard chosen in
  proportion to its priority mass (importance weights recomputed over all shards), learns,
  sends new priorities back without waiting. Ape-X: applies its updates and publishes
  parameters every ``publish_period`` updates. Gorila: pushes gradients to the parameter
  server and takes the newer parameters it answers with.
- :class:`ParameterServerRole`: the :class:`~distdqn.roles.parameter_server.ParameterServer`;
  each new version is ``ray.put`` once, when first asked for, and handed out as an object
  reference, so every actor reads the same object from the object store.

The driver (the ``distdqn train`` process) runs the :class:`~distdqn.runtime.common.Coordinator`
with proxies for the remote roles: it polls each role's ``stats`` (the shards' transition
accounting, the learners' update counts), evaluates greedily, logs, writes checkpoints
(pulling each role's state) and supervises.

Failures: roles are created with ``max_restarts=ray.max_restarts``. A restarted actor
explores with a fresh seed and the newest parameters (``actor_restarts``). A restarted
learner waits until the driver hands it its state from the newest checkpoint (or, before
the first checkpoint, the parameter server's newest parameters); a restarted replay shard
gets its contents back from the newest checkpoint when ``checkpoint_replay`` is on (else
it refills); a restarted parameter server gets its checkpointed state, and every client
notices its new incarnation and re-pulls. A role unreachable for ``ROLE_LOST_S`` seconds,
or a learner that reports a non-finite loss, ends the run (non-zero exit, message).

Ray moves and serializes everything; distdqn opens no socket of its own and unpickles
nothing outside Ray.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distdqn.checkpoint import load_latest
from distdqn.config import ExperimentConfig
from distdqn.core import NonFiniteLossError, SampledBatch, TransitionChunk
from distdqn.envs import EnvSpaces
from distdqn.networks import network_kind
from distdqn.program import build_actor, build_learner, build_parameter_server, build_replay
from distdqn.roles.learner import auto_uses_cuda
from distdqn.runtime.common import Coordinator, IngestStats, RemoteParts, RunAborted, StopRequest, ingest_chunk

log = logging.getLogger(__name__)

PREFETCH = 2
"""Sample requests a learner keeps in flight."""
SAMPLE_BATCHES = 4
"""Batches asked for per sample request (priorities then arrive up to
``PREFETCH * SAMPLE_BATCHES`` updates late, as in Ape-X's asynchronous learner)."""
POLL_S = 0.05
ROLE_LOST_S = 120.0
"""A role that answers no stats call for this long (dead beyond restart) ends the run."""
STOP_GRACE_S = 10.0


def _lost_errors() -> tuple[type[BaseException], ...]:
    import ray

    ex = ray.exceptions
    return (ex.RayActorError, ex.ActorUnavailableError, ex.ObjectLostError)


try:
    _LOST_ERRORS = _lost_errors()
    """A role (or an object it owned) is gone, perhaps only while Ray restarts it."""
except ImportError:  # pragma: no cover - ray is a dependency
    _LOST_ERRORS = ()


def _incarnation() -> int:
    """A random id for this instance of a role (a restart gets a new one)."""
    return int.from_bytes(os.urandom(6), "little")


def _role_setup(threads: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# ============================================================================ replay


_BATCH_FIELDS = ("obs", "action", "reward", "discount", "next_obs", "weights")


def batch_to_numpy(batch: SampledBatch) -> dict[str, Any]:
    """A :class:`SampledBatch` as a dict of numpy arrays (no copies)."""
    out: dict[str, Any] = {k: getattr(batch, k).numpy() for k in _BATCH_FIELDS}
    out["keys"], out["probs"] = batch.keys, batch.probs
    return out


def batch_from_numpy(data: dict[str, Any]) -> SampledBatch:
    """Inverse of :func:`batch_to_numpy`. The arrays may be read-only views of Ray's object
    store; the learner only reads them (or copies them to its device)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable tensors": never written
        tensors = {k: torch.from_numpy(data[k]) for k in _BATCH_FIELDS}
    return SampledBatch(**tensors, keys=data["keys"], probs=data["probs"])


class ShardCore:
    """One replay shard without Ray: the replay, insert de-duplication and accounting.

    Inserts are identified by ``(source, seq)`` where ``source = (actor_id, incarnation)``:
    a call that is retried after it already landed is answered ``"dup"`` and inserts
    nothing. Every chunk that is taken is accounted (:class:`IngestStats`: produced =
    inserted + rejected + dropped); after :meth:`stop`, chunks are counted as dropped.

    Args:
        cfg, spaces: the experiment.
        index, num_shards: which shard (capacity and ``min_replay_size`` are split evenly).
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, index: int = 0, num_shards: int = 1):
        self.replay = build_replay(cfg, spaces, shard=index, num_shards=num_shards)
        self.index = index
        self.last_seq: dict[tuple[int, int], int] = {}
        self.duplicates = 0
        self.stopping = False
        self._stats = IngestStats()

    def is_new(self, source: tuple[int, int], seq: int) -> bool:
        return seq > self.last_seq.get(tuple(source), -1)

    def can_insert(self, chunk: TransitionChunk) -> bool:
        return self.stopping or self.replay.can_insert(len(chunk))

    def insert(self, source: tuple[int, int], seq: int, chunk: TransitionChunk) -> str:
        """Take a chunk: ``"ok"``, ``"dup"`` (already taken) or ``"dropped"`` (stopping).
        Call only when :meth:`can_insert` (the rate limiter is not consulted here)."""
        source = (int(source[0]), int(source[1]))
        if not self.is_new(source, seq):
            self.duplicates += 1
            return "dup"
        self.last_seq[source] = int(seq)
        if self.stopping:
            self._stats.add(chunk, 0, 0, dropped=len(chunk))
            return "dropped"
        self._stats.add(chunk, *ingest_chunk(self.replay, chunk))
        return "ok"

    def sample(self, batch_size: int, priority_updates: list[tuple[np.ndarray, np.ndarray]] = (),
               count: int = 1) -> dict[str, Any]:
        """Apply the learner's pending ``(keys, td_abs)`` priority updates, then draw up to
        ``count`` batches (fewer, maybe none, when the rate limiter or the fill level stops it).

        Returns ``{"batches": [dict of numpy arrays], "mass", "size", "beta"}`` (each batch as
        :func:`batch_to_numpy` lays it out; ``beta`` the exponent of the first). Numpy, not
        torch, because Ray moves numpy arrays without pickling them one by one (several
        times faster for small batches); several batches per call because each call costs
        about a millisecond of Ray overhead.
        """
        for keys, td_abs in priority_updates:
            self.replay.update_priorities(keys, td_abs)
        beta = self.replay.beta
        batches = []
        while len(batches) < count and self.replay.can_sample(batch_size):
            batches.append(batch_to_numpy(self.replay.sample(batch_size)))
        return {"batches": batches, "mass": self.mass(), "size": len(self.replay), "beta": beta}

    def mass(self) -> float:
        tree = getattr(self.replay, "tree", None)
        return float(tree.total()) if tree is not None else float(len(self.replay))

    def drain_stats(self) -> dict[str, Any]:
        """Accounting since the last call, plus the shard's gauges."""
        s, self._stats = self._stats, IngestStats()
        return {"ingest": s, "size": len(self.replay), "nbytes": self.replay.nbytes, "samples": self.replay.samples,
                "inserted": self.replay.inserted, "beta": self.replay.beta, "duplicates": self.duplicates}


class ReplayShardRole:
    """Ray actor around :class:`ShardCore` (asyncio: waiting inserts do not block samples)."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, index: int, num_shards: int):
        _role_setup(1)
        self.core = ShardCore(cfg, spaces, index, num_shards)
        self.incarnation = _incarnation()
        self._room: asyncio.Condition | None = None

    def _cond(self) -> asyncio.Condition:
        if self._room is None:
            self._room = asyncio.Condition()
        return self._room

    async def insert(self, source: tuple[int, int], seq: int, chunk: TransitionChunk) -> str:
        if not self.core.is_new(source, seq):
            return self.core.insert(source, seq, chunk)
        cond = self._cond()
        async with cond:
            await cond.wait_for(lambda: self.core.can_insert(chunk))
            return self.core.insert(source, seq, chunk)

    async def sample(self, batch_size: int, priority_updates: list[tuple[np.ndarray, np.ndarray]] = (),
                     count: int = 1) -> dict[str, Any]:
        out = self.core.sample(batch_size, priority_updates, count)
        cond = self._cond()
        async with cond:  # a sample (or a refused one: the limiter's deadlock breaker) may make room
            cond.notify_all()
        return out

    async def update_priorities(self, updates: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for keys, td_abs in updates:
            self.core.replay.update_priorities(keys, td_abs)

    async def stats(self) -> dict[str, Any]:
        return dict(self.core.drain_stats(), incarnation=self.incarnation)

    async def state_dict(self) -> dict[str, Any]:
        return self.core.replay.state_dict()

    async def load_state_dict(self, state: dict[str, Any]) -> None:
        self.core.replay.load_state_dict(state)

    async def stop(self) -> None:
        self.core.stopping = True
        cond = self._cond()
        async with cond:
            cond.notify_all()


# ============================================================================ parameter server


class ParameterServerRole:
    """Ray actor around :class:`~distdqn.roles.parameter_server.ParameterServer`.

    Clients name the version they hold as ``(incarnation, version)``; after a restart the
    incarnation differs and every client gets the current parameters again even if its
    version number is higher.
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces):
        import ray

        self._ray = ray
        _role_setup(1)
        self.ps = build_parameter_server(cfg, spaces)
        self.incarnation = _incarnation()
        self._ref: tuple[int, Any] | None = None
        self._staleness: list[int] = []

    def _params_ref(self) -> tuple[int, Any]:
        v = self.ps.version
        if self._ref is None or self._ref[0] != v:
            self._ref = (v, self._ray.put(self.ps.get_params()[1]))  # once per version
        return self._ref

    def get_ref(self, incarnation: int, newer_than: int) -> tuple[int, int, list[Any]] | None:
        """``(incarnation, version, [ref])`` when the caller's version is older (or from an
        earlier incarnation), else None. The ref is wrapped in a list so Ray passes it on
        instead of resolving it."""
        if incarnation == self.incarnation and self.ps.version <= newer_than:
            return None
        v, ref = self._params_ref()
        return self.incarnation, v, [ref]

    def publish(self, flat: np.ndarray) -> int:
        return self.ps.set_params(flat)

    def push_gradients(self, grads: np.ndarray, incarnation: int, based_on: int,
                       target_version: int) -> dict[str, Any]:
        """Gorila: apply a gradient computed on ``based_on`` (dropped when it was computed
        on an earlier incarnation's parameters), answer with the newer parameters and target.

        The answer carries the arrays themselves, not object references: the pushing learner
        needs them at once, and a put plus a fetch per gradient cost more than the copy in
        the reply (only actors, which share a version, get it through the object store)."""
        if incarnation == self.incarnation:
            result = self.ps.apply_gradients(grads, based_on)
            self._staleness.append(int(result.staleness))
            applied = result.applied
        else:
            applied = False
        v, flat = self.ps.get_params()
        out: dict[str, Any] = {"applied": applied, "incarnation": self.incarnation, "version": v, "params": flat}
        tv = self.ps.target_version
        if tv != target_version or incarnation != self.incarnation:
            out["target_version"], out["target"] = tv, self.ps.get_target()[1]
        return out

    def get_params(self) -> tuple[int, np.ndarray]:
        return self.ps.get_params()

    def stats(self) -> dict[str, Any]:
        st, self._staleness = self._staleness, []
        out = {"incarnation": self.incarnation, "version": self.ps.version, "staleness": st}
        if self.ps.gradient_mode:
            out.update(applied_updates=self.ps.applied_updates, dropped=self.ps.dropped_stale_gradients,
                       staleness_mean=self.ps.staleness_mean())
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.ps.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ps.load_state_dict(state)
        self._ref = None


# ============================================================================ actor


class ActorRole:
    """Ray actor: an :class:`~distdqn.roles.actor.Actor` stepping in a background thread."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, actor_id: int, shard: str, ps: str):
        import ray

        self._ray = ray
        _role_setup(1)
        self.incarnation = _incarnation()
        # A restarted actor explores anew: the generation only has to differ from before.
        with warnings.catch_warnings():  # Ray 2.x warns about its own use of a deprecated field here
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        generation = (self.incarnation & 0xFFFFFF) + 1 if restarted else 0
        self.actor = build_actor(cfg, spaces, actor_id, generation)
        self.source = (actor_id, self.incarnation)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.shard, self.ps = ray.get_actor(shard), ray.get_actor(ps)
        self._ps_incarnation = -1
        self._stop = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"distdqn-actor-{actor_id}", daemon=True)
        self._thread.start()

    def _fetch(self, newer_than: int) -> tuple[int, np.ndarray] | None:
        ray = self._ray
        try:
            got = ray.get(self.ps.get_ref.remote(self._ps_incarnation, newer_than))
            if got is None:
                return None
            inc, version, (ref,) = got
            flat = ray.get(ref)
        except _LOST_ERRORS:  # the parameter server is being restarted: keep acting, ask later
            return None
        self._ps_incarnation = inc
        return version, flat

    def _deliver(self, chunk: TransitionChunk, seq: int, ref: Any) -> None:
        """Wait for an insert; resend it (same seq) if the shard was lost meanwhile."""
        ray = self._ray
        while True:
            try:
                ray.get(ref)
                return
            except _LOST_ERRORS:
                if self._stop.is_set():
                    return
                time.sleep(0.2)
                ref = self.shard.insert.remote(self.source, seq, chunk)

    def _run(self) -> None:
        seq = 0
        inflight: tuple[TransitionChunk, int, Any] | None = None
        try:
            while not self._stop.is_set():
                self.actor.maybe_sync(self._fetch)
                chunk = self.actor.step()
                if chunk is None:
                    continue
                if inflight is not None:
                    self._deliver(*inflight)
                inflight = (chunk, seq, self.shard.insert.remote(self.source, seq, chunk))
                seq += 1
        except Exception as exc:  # noqa: BLE001 - reported, then the process exits for Ray to restart it
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("actor %d failed", self.source[0])
            os._exit(1)

    def stats(self) -> dict[str, Any]:
        return {"incarnation": self.incarnation, "env_steps": self.actor.env_steps,
                "param_version": self.actor.param_version, "node_id": self.node_id}

    def halt(self) -> None:
        """Stop stepping (returns at once; :meth:`stop` waits for the thread)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=STOP_GRACE_S)
        self.actor.close()


# ============================================================================ learner


def _global_weights(batch: SampledBatch, mass: float, masses: np.ndarray, sizes: np.ndarray, beta: float) -> None:
    """Importance weights over all shards (Schaul et al. 2016, sec. 3.4): the batch came
    from a shard chosen with probability ``mass / sum(masses)`` and then item i with the
    shard-local ``probs``, so ``P(i) = probs * mass / sum(masses)`` over ``N = sum(sizes)``
    items; ``w = (N P)^-beta / max w``. In place on ``batch.weights``."""
    if batch.probs is None:
        return
    total, n = float(masses.sum()), float(sizes.sum())
    p = batch.probs * (mass / max(total, 1e-12))
    w = np.power(np.maximum(n * p, 1e-12), -beta)
    batch.weights = torch.from_numpy((w / w.max()).astype(np.float32))


class LearnerRole:
    """Ray actor: a :class:`~distdqn.roles.learner.Learner` looping in a background thread
    once :meth:`begin` gave it its starting state."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, rank: int, ps: str, shards: tuple[str, ...]):
        import ray

        self._ray = ray
        _role_setup(cfg.learner.torch_threads)
        self.cfg, self.rank = cfg, rank
        self.shards, self.ps = [ray.get_actor(s) for s in shards], ray.get_actor(ps)
        self.gorila = cfg.preset == "gorila"
        self.learner = build_learner(cfg, spaces)
        self.incarnation = _incarnation()
        self.pushed = 0
        self.metrics: dict[str, float] = {}
        self.error: str | None = None
        self._started = False
        self._stop = threading.Event()
        self._ps_incarnation, self._version, self._target_version = -1, -1, -1
        self._push: Any = None  # gorila: the gradient push in flight
        n = len(shards)
        self._masses, self._sizes = np.ones(n), np.zeros(n)
        # new priorities wait here and travel with the next sample request to their shard
        self._prio: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n)]
        self._ready: collections.deque[tuple[int, SampledBatch]] = collections.deque()
        self._rng = np.random.default_rng([cfg.seed, 5, rank, self.incarnation & 0xFFFFFFFF])
        self._thread = threading.Thread(target=self._run, name=f"distdqn-learner-{rank}", daemon=True)

    def begin(self, state: dict[str, Any] | None) -> None:
        """Start learning from ``state`` (a checkpointed learner state), or from the
        parameter server's newest parameters when None."""
        if self._started:
            return
        ray = self._ray
        if state is not None:
            self.learner.load_state_dict(state)
        inc, version, (ref,) = ray.get(self.ps.get_ref.remote(-1, -1))
        if state is None:
            flat = ray.get(ref)
            self.learner.set_params(flat)
            self.learner.set_target_params(flat)
        self._ps_incarnation, self._version = inc, version
        self._started = True
        self._thread.start()

    def _batch(self, pending: collections.deque) -> tuple[int, SampledBatch] | None:
        """The next batch and its shard: from the batches already received, else from the
        oldest request in flight (keeping ``PREFETCH`` requests of ``SAMPLE_BATCHES`` each)."""
        if self._ready:
            return self._ready.popleft()
        ray = self._ray
        while len(pending) < PREFETCH:
            p = self._masses / self._masses.sum() if self._masses.sum() > 0 else None
            j = int(self._rng.choice(len(self.shards), p=p)) if len(self.shards) > 1 else 0
            updates, self._prio[j] = self._prio[j], []
            pending.append((j, self.shards[j].sample.remote(self.cfg.learner.batch_size, updates, SAMPLE_BATCHES)))
        j, ref = pending.popleft()
        try:
            out = ray.get(ref)
        except _LOST_ERRORS:
            time.sleep(0.2)  # the shard is being restarted
            return None
        self._masses[j], self._sizes[j] = out["mass"], out["size"]
        if not out["batches"]:
            time.sleep(0.002)
            return None
        for data in out["batches"]:
            batch = batch_from_numpy(data)
            if len(self.shards) > 1:
                _global_weights(batch, out["mass"], self._masses, self._sizes, out["beta"])
            self._ready.append((j, batch))
        return self._ready.popleft()

    def _note_priorities(self, j: int, keys: np.ndarray, td_abs: np.ndarray) -> None:
        """Queue new priorities for shard ``j``'s next sample request; send them on their
        own when a shard is seldom sampled (small priority mass)."""
        self._prio[j].append((keys, td_abs))
        if len(self._prio[j]) >= 8:
            self.shards[j].update_priorities.remote(self._prio[j])
            self._prio[j] = []

    def _step(self, j: int, batch: SampledBatch) -> None:
        if not self.gorila:
            out = self.learner.learn(batch)
            self._note_priorities(j, batch.keys, out.td_abs)
            if self.learner.updates % self.cfg.learner.publish_period == 0:
                self.ps.publish.remote(self.learner.get_params())
            self.metrics = out.metrics
            return
        based_on = self._version
        out = self.learner.compute_gradients(batch)  # overlaps the previous push's round trip
        self._note_priorities(j, batch.keys, out.td_abs)
        self.metrics = out.metrics
        self._settle_push()
        self._push = self.ps.push_gradients.remote(out.grads.numpy(), self._ps_incarnation, based_on,
                                                   self._target_version)

    def _settle_push(self) -> None:
        """Gorila: wait for the gradient pushed last and take the parameters it answers with.
        One push stays in flight while the next gradient is computed, so a gradient is based
        on parameters at least one version old (the server's staleness rule applies)."""
        if self._push is None:
            return
        ref, self._push = self._push, None
        try:
            reply = self._ray.get(ref)
        except _LOST_ERRORS:  # the parameter server is being restarted: this gradient is lost
            time.sleep(0.2)
            return
        self.pushed += 1
        if reply["version"] != self._version or reply["incarnation"] != self._ps_incarnation:
            self.learner.set_params(reply["params"])
            self._version, self._ps_incarnation = reply["version"], reply["incarnation"]
        if "target" in reply:
            self.learner.set_target_params(reply["target"])
            self._target_version = reply["target_version"]

    def _run(self) -> None:
        pending: collections.deque = collections.deque()
        try:
            while not self._stop.is_set():
                got = self._batch(pending)
                if got is not None:
                    self._step(*got)
        except NonFiniteLossError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported, then the process exits for Ray to restart it
            log.exception("learner %d failed", self.rank)
            self.error = f"{type(exc).__name__}: {exc}"
            os._exit(1)

    def stats(self) -> dict[str, Any]:
        return {"incarnation": self.incarnation, "started": self._started, "updates": self.learner.updates,
                "pushed": self.pushed, "metrics": dict(self.metrics), "error": self.error}

    def state_dict(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def get_params(self) -> np.ndarray:
        return self.learner.get_params()

    def stop(self) -> None:
        self._stop.set()
        if self._started:
            self._thread.join(timeout=STOP_GRACE_S)


# ============================================================================ driver-side proxies


class _ShardsView:
    """The coordinator's view of the replay shards (gauges from the latest stats)."""

    def __init__(self, shards: list[Any]):
        self.shards = shards
        self.gauges: list[dict[str, Any]] = [{"size": 0, "nbytes": 0, "samples": 0, "inserted": 0, "beta": 0.0}
                                             for _ in shards]

    def _total(self, key: str) -> int:
        return int(sum(g[key] for g in self.gauges))

    def __len__(self) -> int:
        return self._total("size")

    nbytes = property(lambda self: self._total("nbytes"))
    samples = property(lambda self: self._total("samples"))
    inserted = property(lambda self: self._total("inserted"))

    @property
    def beta(self) -> float:
        return float(np.mean([g["beta"] for g in self.gauges]))

    def state_dict(self) -> dict[str, Any]:
        import ray

        return {"shards": ray.get([s.state_dict.remote() for s in self.shards])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import ray

        shards = state.get("shards")
        if shards is None or len(shards) != len(self.shards):
            raise ValueError(f"checkpointed replay has {None if shards is None else len(shards)} shards, "
                             f"this run {len(self.shards)} (ray.replay_shards)")
        ray.get([s.load_state_dict.remote(st) for s, st in zip(self.shards, shards)])


class _PSView:
    """The coordinator's view of the parameter server role."""

    def __init__(self, handle: Any, gradient_mode: bool):
        self.handle, self.gradient_mode = handle, gradient_mode
        self.version = 0
        self.applied_updates = 0
        self.dropped_stale_gradients = 0
        self._staleness: list[int] = []
        self._staleness_mean = 0.0

    def note(self, st: dict[str, Any]) -> None:
        self.version = int(st["version"])
        if self.gradient_mode:
            self.applied_updates = int(st["applied_updates"])
            self.dropped_stale_gradients = int(st["dropped"])
            self._staleness.extend(st["staleness"])
            self._staleness_mean = float(st["staleness_mean"])

    def get_params(self, newer_than: int = -1) -> tuple[int, np.ndarray]:
        import ray

        return ray.get(self.handle.get_params.remote())

    def pop_staleness(self) -> list[int]:
        out, self._staleness = self._staleness, []
        return out

    def staleness_mean(self) -> float:
        return self._staleness_mean

    def state_dict(self) -> dict[str, Any]:
        import ray

        return ray.get(self.handle.state_dict.remote())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import ray

        ray.get(self.handle.load_state_dict.remote(state))


class _LearnersView:
    """The coordinator's updater stand-in: update count and learner states."""

    def __init__(self, cfg: ExperimentConfig, learners: list[Any], ps: _PSView):
        self.cfg, self.learners, self.ps = cfg, learners, ps
        self.reported_updates = 0
        self.metrics: dict[str, float] = {}
        self.restored: list[dict[str, Any]] | None = None

    @property
    def updates(self) -> int:
        return self.ps.applied_updates if self.ps.gradient_mode else self.reported_updates

    def params(self) -> np.ndarray:
        """The newest parameters: the apex learner's own (fresher than the last publication),
        else the parameter server's."""
        import ray

        if not self.ps.gradient_mode and self.learners:
            try:
                return ray.get(self.learners[0].get_params.remote(), timeout=30)
            except (*_LOST_ERRORS, ray.exceptions.GetTimeoutError):
                pass
        return self.ps.get_params()[1]

    def state_dict(self) -> dict[str, Any]:
        import ray

        return {"learners": ray.get([lr.state_dict.remote() for lr in self.learners])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = list(state.get("learners", []))


# ============================================================================ driver


def _init_ray(cfg: ExperimentConfig) -> bool:
    """Connect to ``ray.address`` or start a private instance; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    rc = cfg.ray
    common = {"logging_level": logging.WARNING, "log_to_driver": True}
    if rc.address:
        ray.init(address=rc.address, **common)
        return True
    need = cfg.actor.num_actors + cfg.learner.num_learners + 1
    # Ray starts its workers at niceness 15 (below its own daemons). Our roles are the
    # work, and at 15 they lose every contended CPU to anything else on the machine, the
    # driver included: keep them at the driver's priority unless the user set it.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=rc.num_cpus or max(os.cpu_count() or 1, need), include_dashboard=rc.dashboard, **common)
    return True


class _Role:
    """A role's handle and its supervision state in the driver."""

    def __init__(self, kind: str, index: int, handle: Any):
        self.kind, self.index, self.handle = kind, index, handle
        self.incarnation: int | None = None
        self.pending: Any = None
        self.last_seen = time.perf_counter()


def run_ray(cfg: ExperimentConfig, spaces: EnvSpaces, run_dir: Path, resume: bool = False,
            collect_only: bool = False, on_poll: Any = None) -> dict[str, Any]:
    """Train with every role a Ray actor. Returns the summary (also ``summary.json``).

    Args:
        collect_only: no learners (benchmarking collection); needs ``replay.samples_per_insert == 0``.
        on_poll: called as ``on_poll(coordinator, roles)`` after every supervision pass (tests use it to
            break things mid-run).

    Raises:
        NonFiniteLossError: a learner met a NaN/inf loss.
        RunAborted: a role was lost beyond restart.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if collect_only and cfg.replay.samples_per_insert != 0:
        raise ValueError("collect_only needs replay.samples_per_insert=0 (no rate limiting)")
    t_start = time.perf_counter()
    started = _init_ray(cfg)
    startup_s = time.perf_counter() - t_start
    rc = cfg.ray
    restarts = {"max_restarts": rc.max_restarts, "max_task_retries": 0}
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    handles: list[Any] = []
    # Roles find the parameter server and the shards by name (Ray named actors), so no
    # constructor takes another actor's handle: Ray cannot promise to keep such arguments
    # for a restart (ray-project/ray#53727).
    prefix = f"distdqn-{os.getpid()}-{_incarnation():x}"
    ps_name, shard_names = f"{prefix}-ps", tuple(f"{prefix}-replay{i}" for i in range(rc.replay_shards))
    try:
        ps_h = ray.remote(ParameterServerRole).options(num_cpus=0, scheduling_strategy=here, name=ps_name,
                                                       **restarts).remote(cfg, spaces)
        shard_hs = [ray.remote(ReplayShardRole).options(num_cpus=0, scheduling_strategy=here, max_concurrency=1000,
                                                        name=shard_names[i], **restarts).remote(
                                                            cfg, spaces, i, rc.replay_shards)
                    for i in range(rc.replay_shards)]
        handles += [ps_h, *shard_hs]
        ps_view = _PSView(ps_h, gradient_mode=cfg.preset == "gorila")
        shards_view = _ShardsView(shard_hs)
        learners_view = _LearnersView(cfg, [], ps_view)
        co = Coordinator(cfg, spaces, run_dir, deterministic=False, resume=resume,
                         parts=RemoteParts(replay=shards_view, ps=ps_view, updater=learners_view))
        co.summary_extra["ray_startup_s"] = round(startup_s, 3)
        ps_view.note(ray.get(ps_h.stats.remote()))
        learner_hs = []
        if not collect_only:
            gpus = 1 if _learner_gets_gpu(cfg, spaces) else 0
            opts = {"num_cpus": 1, "num_gpus": gpus, **restarts}
            if not gpus:
                opts["scheduling_strategy"] = here
            learner_hs = [ray.remote(LearnerRole).options(**opts).remote(cfg, spaces, r, ps_name, shard_names)
                          for r in range(cfg.learner.num_learners)]
        learners_view.learners = learner_hs
        actor_opts: dict[str, Any] = {"num_cpus": 1, "scheduling_strategy": "SPREAD", **restarts}
        if rc.actor_resource:
            actor_opts["resources"] = {rc.actor_resource: 1}
        actor_hs = [ray.remote(ActorRole).options(**actor_opts).remote(
            cfg, spaces, i, shard_names[i % rc.replay_shards], ps_name) for i in range(cfg.actor.num_actors)]
        handles += learner_hs + actor_hs
        roles = ([_Role("parameter_server", 0, ps_h)] + [_Role("replay", i, h) for i, h in enumerate(shard_hs)]
                 + [_Role("learner", i, h) for i, h in enumerate(learner_hs)]
                 + [_Role("actor", i, h) for i, h in enumerate(actor_hs)])
        return _drive(cfg, co, roles, shards_view, ps_view, learners_view, on_poll)
    finally:
        for h in handles:
            ray.kill(h, no_restart=True)
        if started:
            ray.shutdown()


def _learner_gets_gpu(cfg: ExperimentConfig, spaces: EnvSpaces) -> bool:
    import ray

    if cfg.learner.device == "cpu":
        return False
    if cfg.learner.device == "auto" and not auto_uses_cuda(network_kind(cfg.network, spaces.obs_shape)[0]):
        return False  # auto keeps an MLP learner on the CPU (LearnerConfig.device)
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.learner.device == "cuda" and gpus < cfg.learner.num_learners:
        raise RunAborted(f"learner.device=cuda but the Ray cluster has {gpus:g} GPUs for "
                         f"{cfg.learner.num_learners} learner(s)")
    return gpus >= cfg.learner.num_learners


def _drive(cfg: ExperimentConfig, co: Coordinator, roles: list[_Role], shards_view: _ShardsView,
           ps_view: _PSView, learners_view: _LearnersView, on_poll: Any) -> dict[str, Any]:
    import ray

    stop = StopRequest()
    stop.install()
    error: BaseException | None = None
    by_kind = collections.defaultdict(list)
    for r in roles:
        by_kind[r.kind].append(r)
    learner_ups: dict[int, int] = {}

    def handle(role: _Role, st: dict[str, Any]) -> None:
        first = role.incarnation is None
        restarted = not first and st["incarnation"] != role.incarnation
        role.incarnation = st["incarnation"]
        if role.kind == "replay":
            shards_view.gauges[role.index] = st
            co.account(st["ingest"])
            if restarted:
                co.c.replay_restarts += 1
                log.warning("replay shard %d was restarted (%d)", role.index, co.c.replay_restarts)
                saved = _latest_state(co)
                shard_states = (saved or {}).get("replay", {}).get("shards")
                if shard_states:
                    role.handle.load_state_dict.remote(shard_states[role.index])
        elif role.kind == "parameter_server":
            if restarted:
                co.c.parameter_server_restarts += 1
                log.warning("parameter server was restarted; restoring its newest checkpointed state")
                saved = _latest_state(co)
                if saved is not None:
                    ray.get(role.handle.load_state_dict.remote(saved["parameter_server"]))
                else:
                    ray.get(role.handle.load_state_dict.remote(
                        {"params": torch.tensor(co.current_params()), "version": 0}))
                st = ray.get(role.handle.stats.remote())
            ps_view.note(st)
        elif role.kind == "learner":
            if st["error"]:
                raise NonFiniteLossError(f"learner {role.index}: {st['error']}")
            if restarted:
                co.c.learner_restarts += 1
                log.warning("learner %d was restarted; restoring it from the newest checkpoint", role.index)
            if not st["started"]:
                role.handle.begin.remote(_learner_state(co, learners_view, role.index, from_checkpoint=restarted))
            learner_ups[role.index] = st["updates"] if not ps_view.gradient_mode else st["pushed"]
            if role.index == 0:
                learners_view.reported_updates = st["updates"]
            learners_view.metrics = st["metrics"]
            co.learn_metrics = st["metrics"]
            co._per_learner[role.index] = dict(st["metrics"], replies=learner_ups[role.index])
        elif role.kind == "actor" and restarted:
            co.c.actor_restarts += 1
            log.warning("actor %d was restarted (%d restarts)", role.index, co.c.actor_restarts)

    def poll(timeout: float) -> None:
        now = time.perf_counter()
        for r in roles:
            if r.pending is None:
                r.pending = r.handle.stats.remote()
        ready, _ = ray.wait([r.pending for r in roles], num_returns=len(roles), timeout=timeout)
        ready_set = set(ready)
        for r in roles:
            if r.pending not in ready_set:
                if now - r.last_seen > ROLE_LOST_S:
                    raise RunAborted(f"{r.kind} {r.index} has not answered for {ROLE_LOST_S:.0f} s "
                                     "(lost beyond restart; see the Ray errors above)")
                continue
            ref, r.pending = r.pending, None
            try:
                st = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                log.debug("%s %d unreachable: %s", r.kind, r.index, type(exc).__name__)
                continue
            r.last_seen = now
            handle(r, st)
        co.remote_updates = learners_view.updates

    try:
        while not stop.flag:
            t_poll = time.perf_counter()
            poll(POLL_S)
            time.sleep(max(0.0, POLL_S - (time.perf_counter() - t_poll)))  # the driver stays light
            if on_poll is not None:
                on_poll(co, roles)
            try:
                reason = co.tick()
            except _LOST_ERRORS as exc:  # a role is being restarted: checkpoint on a later pass
                log.warning("checkpoint postponed: %s", type(exc).__name__)
                continue
            if reason is not None:
                stop.set(reason)
                break
    except (NonFiniteLossError, RunAborted) as exc:
        error, stop.reason = exc, f"error: {exc}"
    except KeyboardInterrupt:
        stop.reason = "interrupted"
    finally:
        stop.restore()
    # Actors first told to halt (so they produce no more), then actors and shards stopped
    # together (inserts waiting in a shard return as "dropped", so no actor stays
    # blocked), then the learners.
    _call_all([r for r in roles if r.kind == "actor"], "halt", timeout=5)
    _call_all([r for r in roles if r.kind in ("actor", "replay")], "stop")
    _call_all([r for r in roles if r.kind == "learner"], "stop")
    for r in roles:
        r.pending = None
    try:
        poll(5.0)  # the last accounting
    except RunAborted:
        pass
    co.stop_reason = stop.reason
    try:
        co.checkpoint()
        if error is None and co.stop_reason != "target_return":
            co.evaluate()
    except (ray.exceptions.RayError, RunAborted) as exc:
        log.warning("final checkpoint/evaluation failed: %s", exc)
    summary = co.finish()
    if error is not None:
        raise error
    return summary


def _call_all(roles: list[_Role], method: str, timeout: float = STOP_GRACE_S + 5) -> None:
    import ray

    refs = [getattr(r.handle, method).remote() for r in roles]
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=timeout)


def _latest_state(co: Coordinator) -> dict[str, Any] | None:
    found = load_latest(co.run_dir)
    return None if found is None else found[1]


def _learner_state(co: Coordinator, view: _LearnersView, rank: int, from_checkpoint: bool) -> dict[str, Any] | None:
    """A (re)starting learner's state: the resumed run's, or after a restart the newest
    checkpoint's; None (start from the parameter server's parameters) before any."""
    if not from_checkpoint:
        states = view.restored
    else:
        saved = _latest_state(co)
        states = None if saved is None else saved["updater"].get("learners")
    if states and rank < len(states):
        return states[rank]
    return None
