"""The Ray runtime's learner role: the topology's own learning step
(:class:`~distdqn.topologies.apex.ApexUpdater`, :class:`~distdqn.topologies.gorila.GorilaUpdater`,
:class:`~distdqn.topologies.sync.SyncUpdater`: its learners a ``torch.distributed`` group
that meets at the address the driver picked) looping in a background thread, through ports: the replay shard and the parameter server
of its own process directly (:class:`~distdqn.runtime.ray.shard.LocalShardPort`,
:class:`LocalPublishPort`), the others over Ray:

- :class:`ShardsClient` (the replay port): draws from the shards with ``PREFETCH`` requests
  in flight, each draw from one shard chosen in proportion to its priority mass (importance
  weights recomputed over all shards); new priorities travel with the next request to their
  shard.
- :class:`RayParamsPort` (the parameter port): apex publishes to the parameter server role;
  gorila pushes gradients with one push in flight while the next gradient is computed, and
  takes the newer parameters (and target) each push's answer carries.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from distdqn.config import ExperimentConfig
from distdqn.core import Batch, NonFiniteLossError
from distdqn.envs import EnvSpaces
from distdqn.program import build_learner
from distdqn.runtime import collective
from distdqn.runtime.codec import batch_from_numpy
from distdqn.runtime.ray.common import (
    LOST_ERRORS,
    STOP_GRACE_S,
    RemoteRole,
    incarnation,
    role_setup,
)
from distdqn.runtime.ray.shard import LocalShardPort
from distdqn.topologies import make_updater

log = logging.getLogger(__name__)

PREFETCH = 2
"""Sample requests a learner keeps in flight (priorities then arrive up to about
``PREFETCH`` requests' updates late, as in Ape-X's asynchronous learner)."""
UPDATES_PER_REQUEST = 4
"""Updates' worth of batches asked for per sample request (each request costs Ray's overhead)."""


def _global_weights(batch: Batch, mass: float, masses: np.ndarray, sizes: np.ndarray, beta: float,
                    num_batches: int = 1) -> None:
    """Importance weights over all shards (Schaul et al. 2016, sec. 3.4): the draw came
    from a shard chosen with probability ``mass / sum(masses)`` and then item i with the
    shard-local ``probs``, so ``P(i) = probs * mass / sum(masses)`` over ``N = sum(sizes)``
    items; ``w = (N P)^-beta / max w``, the max taken per batch of the draw. In place on
    ``batch.weights``."""
    if batch.probs is None:
        return
    total, n = float(masses.sum()), float(sizes.sum())
    p = batch.probs * (mass / max(total, 1e-12))
    w = np.power(np.maximum(n * p, 1e-12), -beta).reshape(num_batches, -1)
    batch.weights = torch.from_numpy((w / w.max(axis=1, keepdims=True)).astype(np.float32).reshape(-1))


class ShardsClient:
    """The replay port of a Ray learner (module docstring).

    Args:
        cfg: the experiment (batch size, batches per sample).
        shards: the replay shards' handles.
        rng: picks the shard of each request.
    """

    def __init__(self, cfg: ExperimentConfig, shards: list[Any], rng: np.random.Generator):
        import ray

        self._ray, self.shards, self.rng = ray, shards, rng
        self.b, self.k = cfg.learner.batch_size, cfg.learner.batches_per_sample
        self.draws = max(1, UPDATES_PER_REQUEST // self.k)
        n = len(shards)
        self._masses, self._sizes = np.ones(n), np.zeros(n)
        self._prio: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n)]
        self._ready: collections.deque[tuple[int, Batch]] = collections.deque()
        self._pending: collections.deque[tuple[int, Any]] = collections.deque()
        self._last = 0  # the shard of the draw handed out last (its priorities go back there)

    def can_sample(self, batch_size: int) -> bool:
        """Whether a draw is ready; waits for the oldest request in flight when none is."""
        if self._ready:
            return True
        ray = self._ray
        while len(self._pending) < PREFETCH:
            p = self._masses / self._masses.sum() if self._masses.sum() > 0 else None
            j = int(self.rng.choice(len(self.shards), p=p)) if len(self.shards) > 1 else 0
            updates, self._prio[j] = self._prio[j], []
            self._pending.append((j, self.shards[j].sample.remote(self.b, updates, self.draws, self.k)))
        j, ref = self._pending.popleft()
        try:
            out = ray.get(ref)
        except LOST_ERRORS:
            time.sleep(0.2)  # the shard is being restarted
            return False
        self._masses[j], self._sizes[j] = out["mass"], out["size"]
        if not out["batches"]:
            time.sleep(0.002)
            return False
        for data in out["batches"]:
            batch = batch_from_numpy(data)
            if len(self.shards) > 1:
                _global_weights(batch, out["mass"], self._masses, self._sizes, out["beta"], self.k)
            self._ready.append((j, batch))
        return True

    def sample(self, batch_size: int, num_batches: int = 1) -> Batch:
        self._last, batch = self._ready.popleft()
        return batch

    def update_priorities(self, keys: np.ndarray, td_abs: np.ndarray) -> None:
        """Queue new priorities for the shard of the last draw's next sample request; send
        them on their own when a shard is seldom sampled (small priority mass)."""
        j = self._last
        self._prio[j].append((keys, td_abs))
        if len(self._prio[j]) >= 8:
            self.shards[j].update_priorities.remote(self._prio[j])
            self._prio[j] = []


class RayParamsPort:
    """The parameter port of a Ray learner (module docstring).

    Versions are the parameter server's within its incarnation: after a restart of the
    server, the next answer carries the new incarnation and its parameters are taken
    whatever their version number.
    """

    def __init__(self, ps: Any, gradient_mode: bool, learner: Any, publishes: bool = True):
        import ray

        self._ray, self.handle, self.gradient_mode, self.learner = ray, ps, gradient_mode, learner
        self.publishes = publishes  # sync: rank 0 publishes for the group (its replicas agree)
        self.incarnation = -1
        self._params: tuple[int, np.ndarray, bool] | None = None  # (version, flat, new incarnation), not yet taken
        self._target: tuple[int, np.ndarray] | None = None
        self._target_version = -1
        self._push: Any = None  # the gradient push in flight
        self.pushed = 0

    def begin(self, state: dict[str, Any] | None) -> int:
        """The server's parameters for a starting learner (into it when ``state`` is None);
        returns their version."""
        ray = self._ray
        inc, version, (params,) = ray.get(self.handle.get_ref.remote(-1, -1))
        flat = params if isinstance(params, np.ndarray) else ray.get(params)
        if state is None:
            self.learner.set_params(flat)
            self.learner.set_target_params(flat)
        self.incarnation = inc
        self._params = (version, flat, True)
        return version

    def set_params(self, flat: np.ndarray) -> None:
        if self.publishes:
            self.handle.publish.remote(flat)

    def _settle(self, block: bool) -> None:
        """Take the answer of the push in flight (waiting for it when ``block``)."""
        if self._push is None:
            return
        if not block and not self._ray.wait([self._push], timeout=0)[0]:
            return
        ref, self._push = self._push, None
        try:
            reply = self._ray.get(ref)
        except LOST_ERRORS:  # the parameter server is being restarted: this gradient is lost
            time.sleep(0.2)
            return
        self.pushed += 1
        new = reply["incarnation"] != self.incarnation or (self._params is not None and self._params[2])
        self.incarnation = reply["incarnation"]
        self._params = (reply["version"], reply["params"], new)
        if "target" in reply:
            self._target_version = reply["target_version"]
            self._target = (reply["target_version"], reply["target"])

    def get_params(self, newer_than: int = -1) -> tuple[int, np.ndarray] | None:
        self._settle(block=False)
        got, self._params = self._params, None
        if got is None:
            return None
        version, flat, new_incarnation = got
        return (version, flat) if new_incarnation or version > newer_than else None

    def get_target(self, newer_than: int = -1) -> tuple[int, np.ndarray] | None:
        got, self._target = self._target, None
        return got

    def apply_gradients(self, grads: torch.Tensor, based_on_version: int) -> None:
        self._settle(block=True)
        self._push = self.handle.push_gradients.remote(grads.numpy(), self.incarnation, based_on_version,
                                                       self._target_version)


class LocalPublishPort:
    """The parameter port of an apex learner in the same process as the parameter server
    role: publication is a call, no Ray."""

    gradient_mode = False

    def __init__(self, ps: Any, learner: Any):
        self.ps_role, self.learner = ps, learner
        self.pushed = 0

    def begin(self, state: dict[str, Any] | None) -> int:
        version, flat = self.ps_role.get_params()
        if state is None:
            self.learner.set_params(flat)
            self.learner.set_target_params(flat)
        return version

    def set_params(self, flat: np.ndarray) -> None:
        self.ps_role.publish(flat)


class LearnerRole:
    """One learner and the topology's updater, looping in a background thread once
    :meth:`begin` gave it its starting state.

    Args:
        cfg, spaces: the experiment.
        rank: the learner's rank.
        ps: where the parameter server role is (host name, role name).
        shards: where each replay shard is.

    Its :class:`~distdqn.runtime.ray.common.RoleHost` calls :meth:`attach`: when the host
    also holds the replay (the only shard) and, for apex, the parameter server, the learner
    reaches them directly; otherwise through Ray.
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, rank: int, ps: tuple[str, str],
                 shards: tuple[tuple[str, str], ...]):
        import ray

        self._ray = ray
        role_setup(cfg.learner.torch_threads)
        self.cfg, self.spaces, self.rank = cfg, spaces, rank
        self.rendezvous: str | None = None  # sync: where the group meets (tcp://HOST:PORT), given by begin()
        self.ps_at, self.shards_at = ps, shards
        self.learner = build_learner(cfg, spaces)
        self.incarnation = incarnation()
        self.error: str | None = None
        self._started = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"distdqn-learner-{rank}", daemon=True)

    def attach(self, roles: dict[str, Any]) -> None:
        """Choose the ports: the roles of the same host directly, the others through Ray."""
        ray, cfg = self._ray, self.cfg
        gradient = cfg.topology in ("gorila", "a3c")
        if "parameter_server" in roles and not gradient:
            self.port: Any = LocalPublishPort(roles["parameter_server"], self.learner)
        else:
            self.port = RayParamsPort(RemoteRole(ray.get_actor(self.ps_at[0]), self.ps_at[1]), gradient, self.learner,
                                      publishes=self.rank == 0 or cfg.topology != "sync")
        if "replay" in roles and len(self.shards_at) == 1:
            self.client: Any = LocalShardPort(roles["replay"])
        else:
            rng = np.random.default_rng([cfg.seed, 5, self.rank, self.incarnation & 0xFFFFFFFF])
            # a3c: worker i's learner reads shard i alone, where only its own actor inserts
            shards = [self.shards_at[self.rank]] if cfg.topology == "a3c" else self.shards_at
            self.client = ShardsClient(cfg, [RemoteRole(ray.get_actor(h), r) for h, r in shards], rng)
        extra = {"collective": collective.DistCollective(), "batches": 1} if cfg.topology == "sync" else {}
        self.updater = make_updater(cfg, self.spaces, self.port, learners=[self.learner], **extra)

    def begin(self, state: dict[str, Any] | None, rendezvous: str | None = None) -> None:
        """Start learning from ``state`` (a checkpointed learner state), or from the
        parameter server's newest parameters when None. ``rendezvous``: sync, where this
        start's group meets (the driver picks a new one each time the group forms)."""
        if self._started:
            return
        self.rendezvous = rendezvous
        if state is not None:
            self.learner.load_state_dict(state)
        self.port.begin(state)
        self._started = True
        self._thread.start()

    def _run(self) -> None:
        up, client = self.updater, self.client
        try:
            if self.cfg.topology == "sync":
                self._run_together()
                return
            while not self._stop.is_set():
                if up.can_step(client):
                    up.step(client)
        except NonFiniteLossError as exc:
            self.error = str(exc)
        except Exception as exc:
            log.exception("learner %d failed", self.rank)
            self.error = f"{type(exc).__name__}: {exc}"
            os._exit(1)

    def _run_together(self) -> None:
        """A sync learner's loop: join the group, then rounds in lockstep. Before each round
        the ranks agree (a MAX all-reduce of a stop flag) whether to take it, so that all of
        them stop after the same round and none is left waiting in a collective."""
        cfg, up, client = self.cfg, self.updater, self.client
        backend = collective.init_process_group(self.rank, cfg.learner.num_learners, self.rendezvous,
                                                cfg.learner.dist_backend)
        flag = torch.zeros(1, device=self.learner.device if backend == "nccl" else "cpu")
        try:
            while True:
                while not self._stop.is_set() and not up.can_step(client):
                    pass
                flag.fill_(1.0 if self._stop.is_set() else 0.0)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                if flag.item() > 0:
                    return
                up.step(client)
        finally:
            collective.destroy_process_group()

    def stats(self) -> dict[str, Any]:
        return {"incarnation": self.incarnation, "started": self._started, "updates": self.learner.updates,
                "pushed": self.port.pushed, "metrics": dict(self.updater.metrics), "error": self.error}

    def state_dict(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def get_params(self) -> np.ndarray:
        return self.learner.get_params()

    def stop(self) -> None:
        self._stop.set()
        if self._started:
            self._thread.join(timeout=STOP_GRACE_S)
