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
from distdqn.runtime.ray.common import LOST_ERRORS, STOP_GRACE_S, incarnation, role_setup

log = logging.getLogger(__name__)


class ParameterServerRole:
    """Ray actor around :class:`~distdqn.roles.parameter_server.ParameterServer`.

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


class ActorRole:
    """Ray actor: an :class:`~distdqn.roles.actor.Actor` stepping in a background thread."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, actor_id: int, shard: str, ps: str):
        import ray

        self._ray = ray
        role_setup(1)
        self.incarnation = incarnation()
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
        except LOST_ERRORS:  # the parameter server is being restarted: keep acting, ask later
            return None
        self._ps_incarnation = inc
        return version, flat

    def _deliver(self, chunk: Chunk, seq: int, ref: Any) -> None:
        """Wait for an insert; resend it (same seq) if the shard was lost meanwhile."""
        ray = self._ray
        while True:
            try:
                ray.get(ref)
                return
            except LOST_ERRORS:
                if self._stop.is_set():
                    return
                time.sleep(0.2)
                ref = self.shard.insert.remote(self.source, seq, chunk)

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
