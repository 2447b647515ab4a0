"""The Ray runtime's driver side: the roles' handles and their supervision, and stand-ins
(views) for the remote replay shards, parameter server and learners, so that the one
:class:`~distdqn.runtime.driver.Driver` runs the run (see :mod:`distdqn.runtime.ray`)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from distdqn.config import ExperimentConfig
from distdqn.envs import EnvSpaces
from distdqn.program import build_agent
from distdqn.roles.learner import auto_uses_cuda
from distdqn.runtime.driver import RunAborted
from distdqn.runtime.ray.common import LOST_ERRORS, STOP_GRACE_S

log = logging.getLogger(__name__)

POLL_S = 0.1
ROLE_LOST_S = 120.0
"""A role that answers no stats call for this long (dead beyond restart) ends the run."""


class _ShardsView:
    """The driver's view of the replay shards (gauges from the latest stats)."""

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
    """The driver's view of the parameter server role."""

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
    """The driver's updater stand-in: update count and learner states."""

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
            except (*LOST_ERRORS, ray.exceptions.GetTimeoutError):
                pass
        return self.ps.get_params()[1]

    def state_dict(self) -> dict[str, Any]:
        import ray

        return {"learners": ray.get([lr.state_dict.remote() for lr in self.learners])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = list(state.get("learners", []))


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for single-machine instances: at ``0`` its node IP is the loopback address."""


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While in effect, Ray takes 127.0.0.1 as this node's IP, so that a private instance's
    GCS, raylet, object manager, runtime-env agent and every worker's gRPC server bind to
    loopback only. ``ray.init(_node_ip_address="127.0.0.1")`` cannot do it: Ray replaces a
    loopback address by the machine's reachable one (``services.resolve_ip_for_localhost``).
    Ray's own single-machine mode (:data:`LOOPBACK_ENV`) can: its processes started meanwhile
    inherit the variable; it is restored afterwards, so that a later ``--address`` run in
    this process finds its node by its real IP."""
    from ray._private import ray_constants

    old_env, old_flag = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import, and ray is imported already
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = old_env


def _init_ray(cfg: ExperimentConfig) -> bool:
    """Connect to ``ray.address`` or start a private instance; True when this call started it.

    A private instance accepts connections from this machine only (every socket of its
    processes listens on 127.0.0.1, :func:`_loopback_node`); Ray's token authentication
    stays on as Ray sets it up."""
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
    with _loopback_node():
        ray.init(num_cpus=rc.num_cpus or max(os.cpu_count() or 1, need), include_dashboard=rc.dashboard,
                 dashboard_host="127.0.0.1", **common)
    return True


class _Role:
    """A role, its host's handle (``handle``: the Ray actor, what a crash takes down) and its
    supervision state in the driver."""

    def __init__(self, kind: str, index: int, role: Any):
        self.kind, self.index, self.role, self.handle = kind, index, role, role.host
        self.incarnation: int | None = None
        self.pending: Any = None
        self.last_seen = time.perf_counter()


def _learner_gets_gpu(cfg: ExperimentConfig, spaces: EnvSpaces) -> bool:
    import ray

    if cfg.learner.device == "cpu":
        return False
    if cfg.learner.device == "auto" and not auto_uses_cuda(build_agent(cfg, spaces).network_kind()):
        return False  # auto keeps an MLP learner on the CPU (LearnerConfig.device)
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.learner.device == "cuda" and gpus < cfg.learner.num_learners:
        raise RunAborted(f"learner.device=cuda but the Ray cluster has {gpus:g} GPUs for "
                         f"{cfg.learner.num_learners} learner(s)")
    return gpus >= cfg.learner.num_learners


def _rendezvous() -> str:
    """Where a sync group's learners meet: ``tcp://HOST:PORT`` with HOST this driver's node
    IP (127.0.0.1 on a private instance, :func:`_loopback_node`), where rank 0 runs, and a
    port free now (bound and released; torch's TCP store binds it again in rank 0)."""
    import socket

    import ray

    host = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _call_all(roles: list[_Role], method: str, *args: Any, timeout: float = STOP_GRACE_S + 5) -> None:
    import ray

    refs = [getattr(r.role, method).remote(*args) for r in roles]
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=timeout)
