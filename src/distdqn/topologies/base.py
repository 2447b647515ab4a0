"""The ports a topology's learning step talks through. A runtime implements them: the
replay and parameter server objects themselves in one process (serial; the local runtime's
apex learner), or stand-ins that carry the calls over pipes, shared memory or Ray. The
step itself (``topologies/apex.py``, ``gorila.py``, ``sync.py``) is written once.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from distdqn.core import Batch
from distdqn.roles.parameter_server import ApplyResult


class ReplayPort(Protocol):
    """Where batches come from and where their new priorities go
    (:class:`~distdqn.replay.Replay`, or a runtime's stand-in)."""

    def can_sample(self, batch_size: int) -> bool: ...

    def sample(self, batch_size: int, num_batches: int = 1) -> Batch: ...

    def update_priorities(self, keys: np.ndarray, td_abs: np.ndarray) -> None: ...


class ParamsPort(Protocol):
    """The parameter server as a learner sees it
    (:class:`~distdqn.roles.parameter_server.ParameterServer`, or a stand-in)."""

    def set_params(self, flat: np.ndarray) -> Any:
        """Publish (publish mode)."""
        ...

    def get_params(self, newer_than: int = -1) -> tuple[int, np.ndarray] | None: ...

    def get_target(self, newer_than: int = -1) -> tuple[int, np.ndarray] | None: ...

    def apply_gradients(self, grads: np.ndarray | torch.Tensor, based_on_version: int) -> ApplyResult | None:
        """Gradient mode. None when the result is not known here (it is applied elsewhere,
        asynchronously)."""
        ...


class Collective(Protocol):
    """How synchronous learners agree (:mod:`distdqn.topologies.sync`)."""

    def allreduce_mean_(self, t: torch.Tensor) -> torch.Tensor:
        """In place: the mean of ``t`` over the learner processes (identity for one)."""
        ...

    def average_(self, learners: list[Any]) -> None:
        """Replace every replica's parameters by the mean over all replicas."""
        ...


class Updater(Protocol):
    """A topology's learning step, for the learners one process holds."""

    updates: int
    metrics: dict[str, float]

    def can_step(self, replay: ReplayPort) -> bool: ...

    def step(self, replay: ReplayPort) -> bool:
        """One unit of learning; True when the parameter server got new parameters."""
        ...

    def params(self) -> np.ndarray: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
