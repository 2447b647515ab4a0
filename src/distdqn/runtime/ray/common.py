"""What the Ray runtime's roles share: the errors of a lost role, incarnations, set-up."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

STOP_GRACE_S = 10.0


def _lost_errors() -> tuple[type[BaseException], ...]:
    import ray

    ex = ray.exceptions
    return (ex.RayActorError, ex.ActorUnavailableError, ex.ObjectLostError)


try:
    LOST_ERRORS = _lost_errors()
    """A role (or an object it owned) is gone, perhaps only while Ray restarts it."""
except ImportError:  # pragma: no cover - ray is a dependency
    LOST_ERRORS = ()


def incarnation() -> int:
    """A random id for this instance of a role (a restart gets a new one)."""
    return int.from_bytes(os.urandom(6), "little")


def role_setup(threads: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


class RoleHost:
    """One Ray actor process hosting named roles (plain objects): the runtime's placement
    decides which roles share a process (the apex learner, its replay shard and the
    parameter server do, as in the local runtime's learner process). Ray runs it as a
    threaded actor: every ``call`` runs in one of its threads, and a role that keeps state
    across threads locks it.

    Args:
        roles: ``(name, class, args)`` per role, built in this order; a role with an
            ``attach(roles)`` method is then given the dict of all of them (to reach the
            ones it shares the process with).
    """

    def __init__(self, roles: list[tuple[str, type, tuple]]):
        self.roles: dict[str, Any] = {}
        for name, cls, args in roles:
            self.roles[name] = cls(*args)
        for role in self.roles.values():
            attach = getattr(role, "attach", None)
            if attach is not None:
                attach(self.roles)

    def call(self, role: str, method: str, *args: Any) -> Any:
        return getattr(self.roles[role], method)(*args)

    def call_many(self, calls: list[tuple[str, str, tuple]]) -> list[Any]:
        """Several calls in one, in order: ``[(role, method, args), ...]`` -> their results."""
        return [getattr(self.roles[role], method)(*args) for role, method, args in calls]

    def stats(self) -> dict[str, Any]:
        """The stats of a host's only role (a host of several is asked through :meth:`call`)."""
        (role,) = self.roles.values()
        return role.stats()


class RemoteRole:
    """A role hosted by a :class:`RoleHost`, called like a Ray actor:
    ``RemoteRole(host, "replay").insert.remote(...)`` is ``host.call.remote("replay", "insert", ...)``."""

    def __init__(self, host: Any, role: str):
        self.host, self.role = host, role

    def __getattr__(self, method: str) -> Any:
        if method.startswith("__"):
            raise AttributeError(method)
        m = _Method(self.__dict__["host"], self.__dict__["role"], method)
        self.__dict__[method] = m  # the next lookup finds it without __getattr__
        return m


class _Method:
    def __init__(self, host: Any, role: str, method: str):
        self.host, self.role, self.method = host, role, method

    def remote(self, *args: Any) -> Any:
        return self.host.call.remote(self.role, self.method, *args)
