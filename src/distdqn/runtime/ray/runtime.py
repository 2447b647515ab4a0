"""The Ray runtime as the :class:`~distdqn.runtime.driver.Driver` sees it: it creates the
roles as Ray actors, and each pass polls every role's ``stats`` (the shards' transition
accounting, the learners' update counts) and supervises restarts."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from distdqn.config import ExperimentConfig
from distdqn.core import NonFiniteLossError
from distdqn.envs import EnvSpaces
from distdqn.io.checkpoint import load_latest
from distdqn.runtime.driver import Driver, Parts, RunAborted
from distdqn.runtime.ray.common import LOST_ERRORS, RemoteRole, RoleHost, incarnation
from distdqn.runtime.ray.driver import (
    POLL_S,
    ROLE_LOST_S,
    _call_all,
    _init_ray,
    _learner_gets_gpu,
    _LearnersView,
    _PSView,
    _rendezvous,
    _Role,
    _ShardsView,
)
from distdqn.runtime.ray.learner import LearnerRole
from distdqn.runtime.ray.roles import ActorRole, ParameterServerRole
from distdqn.runtime.ray.seed import EnvWorkerRole, SeedServerRole
from distdqn.runtime.ray.shard import ReplayShardRole

log = logging.getLogger(__name__)


class RayRuntime:
    """Every role a Ray actor (see :mod:`distdqn.runtime.ray`).

    Args:
        cfg, spaces: the experiment.
        collect_only: no learners (benchmarking collection); needs ``replay.samples_per_insert == 0``.
        on_poll: called as ``on_poll(driver, roles)`` after every supervision pass (tests use it
            to break things mid-run).
    """

    deterministic = False

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, collect_only: bool = False,
                 on_poll: Callable[[Driver, list[_Role]], None] | None = None):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if collect_only and cfg.replay.samples_per_insert != 0:
            raise ValueError("collect_only needs replay.samples_per_insert=0 (no rate limiting)")
        self.cfg, self.spaces, self.collect_only, self.on_poll = cfg, spaces, collect_only, on_poll
        self.tail_errors = (ray.exceptions.RayError, RunAborted)
        self.transient_errors = LOST_ERRORS
        t_start = time.perf_counter()
        self.started_ray = _init_ray(cfg)
        self.startup_s = time.perf_counter() - t_start
        rc = cfg.ray
        self.restarts = {"max_restarts": rc.max_restarts, "max_task_retries": 0}
        self.here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
        self.handles: list[Any] = []
        # Roles find the parameter server and the shards by name (Ray named actors), so no
        # constructor takes another actor's handle: Ray cannot promise to keep such arguments
        # for a restart (ray-project/ray#53727).
        prefix = f"distdqn-{os.getpid()}-{incarnation():x}"
        self.ps_name = f"{prefix}-ps"
        self.shard_names = tuple(f"{prefix}-replay{i}" for i in range(rc.replay_shards))
        self.roles: list[_Role] = []
        self.driver: Driver | None = None
        self._learner_ups: dict[int, int] = {}
        self._waiting: dict[int, bool] = {}  # sync: learner rank -> waits unstarted for its group
        self._reforming = False

    def _host(self, roles: list[tuple[str, type, tuple]], name: str | None = None, **options: Any) -> Any:
        """A :class:`RoleHost` Ray actor holding ``roles``."""
        import ray

        opts = {"max_concurrency": self.cfg.actor.num_actors + self.cfg.learner.num_learners + 8,
                **self.restarts, **options}
        if name is not None:
            opts["name"] = name
        handle = ray.remote(RoleHost).options(**opts).remote(roles)
        self.handles.append(handle)
        return handle

    def build(self) -> None:
        """Create the parameter server and the replay shards (their state may be restored);
        with apex on one shard, its learner too: the three share one process, as in the
        local runtime's learner process (the learner draws and publishes without Ray)."""
        import ray

        cfg, spaces, rc = self.cfg, self.spaces, self.cfg.ray
        n = rc.replay_shards
        self.colocated = cfg.topology == "apex" and n == 1
        ps_at, shards_at = (self.ps_name, "parameter_server"), tuple((name, "replay") for name in self.shard_names)
        self.ps_at, self.shards_at = ps_at, shards_at
        learner_roles: list[tuple[str, type, tuple]] = []
        gpu = {}
        if self.colocated:
            shards_at = self.shards_at = ((self.ps_name, "replay"),)
            if not self.collect_only:
                learner_roles = [("learner", LearnerRole, (cfg, spaces, 0, ps_at, shards_at))]
                gpu = {"num_gpus": 1} if _learner_gets_gpu(cfg, spaces) else {}
            host = self._host([("replay", ReplayShardRole, (cfg, spaces, 0, 1)),
                               ("parameter_server", ParameterServerRole, (cfg, spaces)), *learner_roles],
                              name=self.ps_name, num_cpus=1 if learner_roles else 0,
                              **({} if gpu else {"scheduling_strategy": self.here}), **gpu)
            ps_h, shard_hs = RemoteRole(host, "parameter_server"), [RemoteRole(host, "replay")]
            self.learner_hs = [RemoteRole(host, "learner")] if learner_roles else []
        else:
            ps_h = RemoteRole(self._host([("parameter_server", ParameterServerRole, (cfg, spaces))], name=self.ps_name,
                                         num_cpus=0, scheduling_strategy=self.here), "parameter_server")
            shard_hs = [RemoteRole(self._host([("replay", ReplayShardRole, (cfg, spaces, i, n))],
                                              name=self.shard_names[i], num_cpus=0, scheduling_strategy=self.here),
                                   "replay") for i in range(n)]
            self.learner_hs = []
        self.ps_view = _PSView(ps_h, gradient_mode=cfg.topology in ("gorila", "a3c"))
        self.shards_view = _ShardsView(shard_hs)
        self.learners_view = _LearnersView(cfg, list(self.learner_hs), self.ps_view)
        self.parts = Parts(replay=self.shards_view, ps=self.ps_view, updater=self.learners_view)
        self.ps_view.note(ray.get(ps_h.stats.remote()))
        self.roles = ([_Role("parameter_server", 0, ps_h)]
                      + [_Role("replay", i, h) for i, h in enumerate(shard_hs)])

    def start(self, driver: Driver) -> None:
        """Create the learners (those not hosted with the replay) and the actors."""
        cfg, spaces, rc = self.cfg, self.spaces, self.cfg.ray
        self.driver = driver
        driver.summary_extra["ray_startup_s"] = round(self.startup_s, 3)
        if not self.collect_only and not self.colocated:
            gpus = 1 if _learner_gets_gpu(cfg, spaces) else 0
            opts: dict[str, Any] = {"num_cpus": 1, "num_gpus": gpus}
            if not gpus:
                opts["scheduling_strategy"] = self.here
            sync = cfg.topology == "sync"
            self.learner_hs = [
                RemoteRole(self._host([("learner", LearnerRole, (cfg, spaces, r, self.ps_at, self.shards_at))],
                                      # sync: rank 0 serves the group's store at the driver's address
                                      **(dict(opts, scheduling_strategy=self.here) if sync and r == 0 else opts)),
                           "learner")
                for r in range(cfg.learner.num_learners)]
            self.learners_view.learners = list(self.learner_hs)
        actor_opts: dict[str, Any] = {"num_cpus": 1, "scheduling_strategy": "SPREAD", "max_concurrency": 4}
        if rc.actor_resource:
            actor_opts["resources"] = {rc.actor_resource: 1}
        if cfg.topology == "seed":
            actor_hs = self._seed_roles(actor_opts)
        else:
            actor_hs = [RemoteRole(self._host([("actor", ActorRole, (cfg, spaces, i,
                                                                     self.shards_at[i % len(self.shards_at)],
                                                                     self.ps_at))], **actor_opts), "actor")
                        for i in range(cfg.actor.num_actors)]
        self.roles += ([_Role("learner", i, h) for i, h in enumerate(self.learner_hs)]
                       + [_Role("actor", i, h) for i, h in enumerate(actor_hs)])

    def _seed_roles(self, actor_opts: dict[str, Any]) -> list[RemoteRole]:
        """SEED: the env workers (named, placed as actors are, one call at a time), then the
        inference server beside the learner, which finds them by name."""
        cfg, spaces = self.cfg, self.spaces
        prefix = self.ps_name.removesuffix("-ps")
        names = [f"{prefix}-env-worker{i}" for i in range(cfg.actor.num_actors)]
        worker_opts = dict(actor_opts, max_concurrency=1)
        workers = [RemoteRole(self._host([("actor", EnvWorkerRole, (cfg, spaces, i))], name=names[i], **worker_opts),
                              "actor") for i in range(cfg.actor.num_actors)]
        server = RemoteRole(self._host([("actor", SeedServerRole, (cfg, spaces, 0, self.shards_at[0], self.ps_at,
                                                                    [(n, "actor") for n in names]))],
                                       num_cpus=1, max_concurrency=4, scheduling_strategy=self.here), "actor")
        return [server, *workers]

    # ------------------------------------------------------------------ driver hooks

    def restore_extra(self, extra: dict[str, Any]) -> None:
        pass

    def checkpoint_extra(self) -> dict[str, Any]:
        return {}

    def current_params(self) -> np.ndarray:
        return self.learners_view.params()

    def eval_runner(self) -> None:
        return None

    def pump(self) -> bool:
        t_poll = time.perf_counter()
        self._poll(POLL_S)
        time.sleep(max(0.0, POLL_S - (time.perf_counter() - t_poll)))  # the driver stays light
        if self.on_poll is not None:
            self.on_poll(self.driver, self.roles)
        return True

    def supervise(self) -> None:
        pass  # restarts are noticed in the stats (see _handle)

    def idle(self) -> None:
        pass

    def _latest_state(self) -> dict[str, Any] | None:
        found = load_latest(self.driver.run_dir)
        return None if found is None else found[1]

    def _learner_state(self, rank: int, from_checkpoint: bool) -> dict[str, Any] | None:
        """A (re)starting learner's state: the resumed run's, or after a restart the newest
        checkpoint's; None (start from the parameter server's parameters) before any."""
        if not from_checkpoint:
            states = self.learners_view.restored
        else:
            saved = self._latest_state()
            states = None if saved is None else saved["updater"].get("learners")
        if states and rank < len(states):
            return states[rank]
        return None

    def _handle(self, role: _Role, st: dict[str, Any]) -> None:
        import ray

        d = self.driver
        first = role.incarnation is None
        restarted = not first and st["incarnation"] != role.incarnation
        role.incarnation = st["incarnation"]
        if role.kind == "replay":
            self.shards_view.gauges[role.index] = st
            d.ledger.account(st["ingest"], self.ps_view.version)
            if restarted:
                d.c.replay_restarts += 1
                log.warning("replay shard %d was restarted (%d)", role.index, d.c.replay_restarts)
                shard_states = (self._latest_state() or {}).get("replay", {}).get("shards")
                if shard_states:
                    role.role.load_state_dict.remote(shard_states[role.index])
        elif role.kind == "parameter_server":
            if restarted:
                d.c.parameter_server_restarts += 1
                log.warning("parameter server was restarted; restoring its newest checkpointed state")
                saved = self._latest_state()
                if saved is not None:
                    ray.get(role.role.load_state_dict.remote(saved["parameter_server"]))
                else:
                    ray.get(role.role.load_state_dict.remote(
                        {"params": torch.tensor(self.current_params()), "version": 0}))
                st = ray.get(role.role.stats.remote())
            self.ps_view.note(st)
        elif role.kind == "learner":
            if st["error"]:
                raise NonFiniteLossError(f"learner {role.index}: {st['error']}")
            if restarted:
                d.c.learner_restarts += 1
                log.warning("learner %d was restarted; restoring it from the newest checkpoint", role.index)
            if self.cfg.topology == "sync":
                self._sync_group(role, st, restarted)
            elif not st["started"]:
                role.role.begin.remote(self._learner_state(role.index, from_checkpoint=restarted))
            ups = st["updates"] if not self.ps_view.gradient_mode else st["pushed"]
            if role.index == 0:
                self.learners_view.reported_updates = st["updates"]
            self.learners_view.metrics = st["metrics"]
            d.report.learn_metrics = st["metrics"]
            d.report.note_learner(role.index, st["metrics"], replies=ups)
        elif role.kind == "actor" and restarted:
            d.c.actor_restarts += 1
            log.warning("actor %d was restarted (%d restarts)", role.index, d.c.actor_restarts)

    def _sync_group(self, role: _Role, st: dict[str, Any], restarted: bool) -> None:
        """Form the sync learners' group, and form it again after one of them was restarted:
        its peers are restarted too (their collectives failed with it, or wait on it), and
        once every learner waits unstarted, all begin together, from the newest checkpoint,
        at a new rendezvous address."""
        import ray

        learners = [r for r in self.roles if r.kind == "learner"]
        if restarted and not self._reforming:
            self._reforming = True
            log.warning("sync learner %d was lost: restarting its %d peers to form the group again",
                        role.index, len(learners) - 1)
            for r in learners:
                if r is not role:
                    ray.kill(r.handle, no_restart=False)
        self._waiting[role.index] = not st["started"]
        if len(self._waiting) == len(learners) and all(self._waiting.values()):
            rendezvous = _rendezvous()
            for r in learners:
                r.role.begin.remote(self._learner_state(r.index, from_checkpoint=self._reforming), rendezvous)
                self._waiting[r.index] = False
            self._reforming = False

    def _poll(self, timeout: float) -> None:
        import ray

        roles = self.roles
        now = time.perf_counter()
        for r in roles:
            if r.pending is None:
                r.pending = r.role.stats.remote()
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
            self._handle(r, st)

    def stop(self, graceful: bool = True) -> None:
        """Actors first told to halt (so they produce no more), then actors and shards stopped,
        then the learners; then the last accounting.

        A graceful stop keeps what is in flight: the shards take every insert at once (past
        the rate limiter), and each actor delivers its chunk in flight and its last partial
        chunk before its thread ends. An abrupt one stops actors and shards together
        (inserts waiting in a shard return as "dropped", counted, so no actor stays blocked)."""
        roles = self.roles
        actors = [r for r in roles if r.kind == "actor"]
        shards = [r for r in roles if r.kind == "replay"]
        if graceful:
            _call_all(shards, "drain", timeout=5)
            _call_all(actors, "halt", True, timeout=5)
            _call_all(actors, "stop")
            _call_all(shards, "stop")
        else:
            _call_all(actors, "halt", timeout=5)
            _call_all(actors + shards, "stop")
        _call_all([r for r in roles if r.kind == "learner"], "stop")
        for r in roles:
            r.pending = None
        try:
            self._poll(5.0)
        except RunAborted:
            pass

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        import ray

        for h in self.handles:
            ray.kill(h, no_restart=True)
        if self.started_ray:
            ray.shutdown()
