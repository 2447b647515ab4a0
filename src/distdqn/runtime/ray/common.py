"""What the Ray runtime's roles share: the errors of a lost role, incarnations, set-up."""

from __future__ import annotations

import logging
import os

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
