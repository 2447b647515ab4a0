"""The Ray runtime's parameter server and actor roles (each made a Ray actor by
:func:`~distdqn.runtime.ray.run_ray`)."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from typing import Any

import numpy as np

from distdqn.config import ExperimentConfig
from distdqn.core import Chunk
from distdqn.envs import EnvSpaces
from distdqn.program import build_actor, build_parameter_server
from distdqn.runtime.ray.common import (
    LOST_ERRORS,
    STOP_GRACE_S,
    RemoteRole,
    incarnation,
    role_setup,
)

log = logging.getLogger(__name__)

INLINE_BYTES = 96 * 1024
"""Parameter vectors up to this size travel inside the answer to ``get_ref`` (below Ray's
limit for objects returned inline, 100 KiB): no object-store round trip per sync."""


class ParameterServerRole:
    """The :class:`~distdqn.roles.parameter_server.ParameterServer` as a Ray role (its calls
    come from several threads; the server locks itself).

    Clients name the version they hold as ``(incarnation, version)``; after a restart the
    incarnation differs and every client gets the current parameters again even if its
    version number is higher.
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces):
        import ray

        self._ray = ray
        role_setup(1)
        self.ps = build_parameter_server(cfg, spaces)
        self.incarnation = incarnation()
        self._ref: tuple[int, Any] | None = None
        self._ref_lock = threading.Lock()
        self._staleness: list[int] = []

    def _params_ref(self) -> tuple[int, Any]:
        with self._ref_lock:
            v, flat = self.ps.get_params()
            if self._ref is None or self._ref[0] != v:
                self._ref = (v, self._ray.put(flat))  # once per version
            return self._ref

    def get_ref(self, incarnation: int, newer_than: int) -> tuple[int, int, list[Any]] | None:
        """``(incarnation, version, [params])`` when the caller's version is older (or from an
        earlier incarnation), else None. ``params`` is the vector itself when it is small
        enough for Ray to carry in the answer (:data:`INLINE_BYTES`), else an object
        reference, put once per version so that all actors of a node read the same object;
        wrapped in a list so Ray passes the reference on instead of resolving it."""
        if incarnation == self.incarnation and self.ps.version <= newer_than:
            return None
        if self.ps.num_params * 4 <= INLINE_BYTES:
            v, flat = self.ps.get_params()
            return self.incarnation, v, [flat]
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


class ActorRole:
    """An :class:`~distdqn.roles.actor.Actor` stepping in a background thread, inserting into
    its replay shard (``shard``: host name and role name) and pulling from the parameter
    server (``ps``: the same).

    Each chunk is inserted with one call in flight, numbered ``(actor_id, incarnation, seq)``.
    Parameters are asked for without waiting: the actor acts on the ones it has until newer
    ones arrive. When the shard and the parameter server share a host, the ask travels in
    the chunk's own insert call (:meth:`RoleHost.call_many`), so syncing costs no call of
    its own: the answer, fresh when the insert returns, is taken at the next
    ``param_sync_period`` boundary.
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, actor_id: int, shard: tuple[str, str],
                 ps: tuple[str, str]):
        import ray

        self._ray = ray
        role_setup(1)
        self.incarnation = incarnation()
        # A restarted actor explores anew: the generation only has to differ from before.
        with warnings.catch_warnings():  # Ray 2.x warns about its own use of a deprecated field here
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        generation = (self.incarnation & 0xFFFFFF) + 1 if restarted else 0
        self.actor = self._producer(cfg, spaces, actor_id, generation)
        self.source = (actor_id, self.incarnation)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.shard = RemoteRole(ray.get_actor(shard[0]), shard[1])
        self.ps = RemoteRole(ray.get_actor(ps[0]), ps[1])
        self.together = shard[0] == ps[0]  # one host: asks ride on inserts
        self._ps_incarnation = -1
        self._asked: Any = None  # the parameter request in flight
        self._answer: Any = None  # parameters that came with an insert's answer
        self._stop = threading.Event()
        self._keep = False  # set by halt(keep=True)
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"distdqn-actor-{actor_id}", daemon=True)
        self._thread.start()

    def _producer(self, cfg: ExperimentConfig, spaces: EnvSpaces, actor_id: int, generation: int) -> Any:
        """What makes the chunks (``tick(fetch)``, ``flush``, ``env_steps``, ``param_version``,
        ``close``): the actor itself."""
        return build_actor(cfg, spaces, actor_id, generation)

    def _final_chunks(self) -> list[Chunk]:
        """A graceful stop's last chunks: the actor's partial one."""
        last = self.actor.flush()
        return [] if last is None else [last]

    def _take(self, answer: Any) -> tuple[int, np.ndarray] | None:
        if answer is None:
            return None
        inc, version, (params,) = answer
        self._ps_incarnation = inc
        return version, params if isinstance(params, np.ndarray) else self._ray.get(params)

    def _fetch(self, newer_than: int) -> tuple[int, np.ndarray] | None:
        """The newer parameters asked for earlier, if they have arrived; asks for the next
        ones. The actor never waits on the parameter server."""
        if self.together:
            got, self._answer = self._answer, None
            return self._take(got)
        ray = self._ray
        got = None
        try:
            if self._asked is not None and ray.wait([self._asked], timeout=0)[0]:
                answer, self._asked = ray.get(self._asked), None
                got = self._take(answer)
                if got is not None:
                    newer_than = got[0]
            if self._asked is None:
                self._asked = self.ps.get_ref.remote(self._ps_incarnation, newer_than)
        except LOST_ERRORS:  # the parameter server is being restarted: keep acting, ask later
            self._asked = None
        return got

    def _insert(self, seq: int, chunk: Chunk) -> Any:
        if not self.together:
            return self.shard.insert.remote(self.source, seq, chunk)
        ask = ("parameter_server", "get_ref", (self._ps_incarnation, self.actor.param_version))
        return self.shard.host.call_many.remote([(self.shard.role, "insert", (self.source, seq, chunk)), ask])

    def _deliver(self, chunk: Chunk, seq: int, ref: Any) -> None:
        """Wait for an insert; resend it (same seq) if the shard was lost meanwhile."""
        ray = self._ray
        while True:
            try:
                out = ray.get(ref)
                if self.together:
                    self._answer = out[1]  # taken at the actor's next sync
                return
            except LOST_ERRORS:
                if self._stop.is_set():
                    return
                time.sleep(0.2)
                ref = self._insert(seq, chunk)

    def _run(self) -> None:
        seq = 0
        inflight: tuple[Chunk, int, Any] | None = None
        try:
            while not self._stop.is_set():
                chunk = self.actor.tick(self._fetch)
                if chunk is None:
                    continue
                if inflight is not None:
                    self._deliver(*inflight)
                inflight = (chunk, seq, self._insert(seq, chunk))
                seq += 1
            if self._keep:  # a graceful stop: the chunk in flight, then the last partial one
                if inflight is not None:
                    self._deliver(*inflight)
                for last in self._final_chunks():
                    self._deliver(last, seq, self._insert(seq, last))
                    seq += 1
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("actor %d failed", self.source[0])
            os._exit(1)

    def stats(self) -> dict[str, Any]:
        return {"incarnation": self.incarnation, "env_steps": self.actor.env_steps,
                "param_version": self.actor.param_version, "node_id": self.node_id}

    def halt(self, keep: bool = False) -> None:
        """Stop stepping (returns at once; :meth:`stop` waits for the thread). With ``keep``
        (a graceful stop) the thread first delivers its chunk in flight and its last
        partial chunk (the shards take them: ``ReplayShardRole.drain``)."""
        self._keep = bool(keep)
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=STOP_GRACE_S)
        self.actor.close()
