"""The ParameterServer role: the authoritative flat parameters and their version.

Two modes:

* **publish** (Ape-X, Horgan et al. 2018): the learner owns the optimizer and publishes
  whole parameter vectors with :meth:`ParameterServer.set_params`.
* **gradient** (Gorila, Nair et al. 2015, "Massively Parallel Methods for Deep
  Reinforcement Learning", sec. 3): learners pull parameters, compute gradients on their
  own replay samples and send them back; the server owns the optimizer and the target
  network and applies the gradients asynchronously (:meth:`ParameterServer.apply_gradients`).
  A gradient computed on parameters ``based_on_version`` arrives with staleness
  ``version - based_on_version``; too stale ones are dropped (Gorila discards gradients
  from parameters that are too old) or scaled by ``1/staleness`` (Zhang et al. 2016,
  "Staleness-aware Async-SGD for Distributed Deep Learning", divide the learning rate by
  the staleness).
"""

from __future__ import annotations

import copy
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from distdqn.config import LearnerConfig, ParameterServerConfig
from distdqn.core import NonFiniteLossError, flat_params, load_flat_params
from distdqn.roles.optim import make_optimizer, update_target


def _default_ps_cfg() -> ParameterServerConfig:
    return ParameterServerConfig()


@dataclass(frozen=True)
class ApplyResult:
    """What happened to one gradient sent to :meth:`ParameterServer.apply_gradients`.

    Attributes:
        applied: False when it was dropped as too stale.
        staleness: ``version - based_on_version`` at arrival (>= 0).
        scale: factor the gradient was multiplied by: 1.0, ``1/staleness`` under
            ``stale_policy="scale"`` when too stale, 0.0 when dropped.
    """

    applied: bool
    staleness: int
    scale: float


class ParameterServer:
    """Holds the authoritative flat float32 parameter vector and an integer version.

    In the Ape-X topology (publish mode, ``network=None``) the learner owns the optimizer
    and publishes with :meth:`set_params`; actors and the evaluator pull with
    :meth:`get_params`.

    In the Gorila topology (gradient mode, ``network`` given) the server owns ``network``
    (its parameters *are* the authoritative parameters, initialised from ``initial``), a
    target copy and an optimizer built by :func:`distdqn.roles.learner.make_optimizer`;
    learners send gradients to :meth:`apply_gradients` and pull the target network with
    :meth:`get_target`. Each applied gradient is one version.

    All methods are serialized by an internal lock, so several threads may call them.

    Args:
        initial: ``[P]`` float32 initial parameters (version 0), layout of
            :func:`distdqn.core.flat_params`.
        network: gradient mode: the module the server owns (kept on its device; it must have
            no buffers, so ``state_dict`` order is ``named_parameters`` order).
        learner_cfg: gradient mode: optimizer, target-update period / tau. Default
            ``LearnerConfig()``.
        ps_cfg: gradient mode: any object with ``max_staleness: int >= 0`` and
            ``stale_policy: "drop" | "scale"`` (``distdqn.config.ParameterServerConfig``).
            Default: ``max_staleness=4``, ``stale_policy="drop"``.

    Raises:
        ValueError: ``initial`` does not match ``network``; invalid ``ps_cfg`` values;
            the network has buffers.
    """

    def __init__(self, initial: np.ndarray, network: nn.Module | None = None,
                 learner_cfg: LearnerConfig | None = None, ps_cfg: Any | None = None):
        self._lock = threading.RLock()
        self.version = 0
        self.gradient_mode = network is not None
        self.applied_updates = 0
        self.dropped_stale_gradients = 0
        self.staleness_counts: dict[int, int] = {}
        self._pending_staleness: list[int] = []
        if network is None:
            self._params = np.array(initial, dtype=np.float32, copy=True)
            return
        self.learner_cfg = learner_cfg if learner_cfg is not None else LearnerConfig()
        self.ps_cfg = ps_cfg if ps_cfg is not None else _default_ps_cfg()
        max_staleness = self.ps_cfg.max_staleness
        if isinstance(max_staleness, bool) or not isinstance(max_staleness, int) or max_staleness < 0:
            raise ValueError(f"max_staleness must be an integer >= 0, got {max_staleness!r}")
        if self.ps_cfg.stale_policy not in ("drop", "scale"):
            raise ValueError(f"stale_policy must be 'drop' or 'scale', got {self.ps_cfg.stale_policy!r}")
        self.network = network
        named = dict(network.named_parameters())
        keys = list(network.state_dict().keys())
        if keys != list(named.keys()):
            raise ValueError("gradient mode needs a network without buffers or shared parameters "
                             "(state_dict order must equal named_parameters order)")
        self._ordered = [named[k] for k in keys]
        self._numels = [p.numel() for p in self._ordered]
        load_flat_params(network, initial)  # ValueError on a length mismatch
        self.target = copy.deepcopy(network)
        self.target.requires_grad_(False)
        self.target_version = 0
        self.optimizer = make_optimizer(self.learner_cfg, network.parameters())
        self._cache: tuple[int, np.ndarray] | None = None
        self._target_cache: tuple[int, np.ndarray] | None = None

    # ------------------------------------------------------------------ both modes

    @property
    def num_params(self) -> int:
        if self.gradient_mode:
            return int(sum(self._numels))
        return int(self._params.size)

    def set_params(self, flat: np.ndarray) -> int:
        """Publish new parameters (publish mode); returns the new version.

        Raises:
            ValueError: wrong length.
            RuntimeError: in gradient mode (the server's optimizer owns the parameters).
        """
        if self.gradient_mode:
            raise RuntimeError("the parameter server is in gradient mode: use apply_gradients, not set_params")
        with self._lock:
            if flat.size != self._params.size:
                raise ValueError(f"parameter vector has {flat.size} values, expected {self._params.size}")
            self._params[...] = flat
            self.version += 1
            return self.version

    def get_params(self, newer_than: int = -1) -> tuple[int, np.ndarray] | None:
        """``(version, copy of params)`` if the version is newer than ``newer_than``, else None.

        The params are a ``[P]`` float32 numpy vector in :func:`distdqn.core.flat_params` layout.
        """
        with self._lock:
            if self.version <= newer_than:
                return None
            if not self.gradient_mode:
                return self.version, self._params.copy()
            if self._cache is None or self._cache[0] != self.version:
                self._cache = (self.version, flat_params(self.network))
            return self.version, self._cache[1].copy()

    # ------------------------------------------------------------------ gradient mode

    def apply_gradients(self, grads: np.ndarray | torch.Tensor, based_on_version: int) -> ApplyResult:
        """Apply one learner's gradient (Gorila, Nair et al. 2015, sec. 3).

        ``staleness = version - based_on_version``. If ``staleness > ps_cfg.max_staleness``:
        ``stale_policy="drop"`` discards the gradient (counted in ``dropped_stale_gradients``);
        ``"scale"`` applies ``grads / staleness`` (Zhang et al. 2016, "Staleness-aware
        Async-SGD": divide by the staleness). Otherwise the gradient is applied as is.

        Applying: the flat gradient is copied once and each parameter's ``.grad`` is set to
        its view of the copy (``state_dict`` order); then ``optimizer.step()``, ``version += 1``,
        ``applied_updates += 1`` and the target update: a hard copy every
        ``learner_cfg.target_update_period`` *applied* updates, or Polyak averaging with
        ``learner_cfg.tau`` on every applied update (as :class:`~distdqn.roles.learner.Learner`);
        each target change bumps ``target_version``.

        Every arrival (applied or dropped) is recorded in ``staleness_counts`` and in the list
        returned by :meth:`pop_staleness`.

        Args:
            grads: ``[P]`` float32 (numpy or torch, any device) in
                :func:`distdqn.core.flat_params` layout; not modified or kept.
            based_on_version: the server version of the parameters the gradient was computed
                with (``0 <= based_on_version <= version``).

        Returns:
            :class:`ApplyResult`.

        Raises:
            RuntimeError: publish mode.
            ValueError: ``based_on_version`` is negative or newer than ``version``; wrong length.
            NonFiniteLossError: any NaN/inf value (message names the server version); nothing
                changes (checked before the staleness decision).
        """
        self._require_gradient_mode("apply_gradients")
        g = torch.as_tensor(grads)
        with self._lock:
            based_on_version = int(based_on_version)
            if based_on_version < 0 or based_on_version > self.version:
                raise ValueError(f"based_on_version={based_on_version} is outside [0, {self.version}] "
                                 f"(the server is at version {self.version}); staleness would be "
                                 f"{self.version - based_on_version}")
            total = self.num_params
            if g.numel() != total:
                raise ValueError(f"gradient vector has {g.numel()} values, network needs {total}")
            dev = self._ordered[0].device if self._ordered else torch.device("cpu")
            # No copy unless needed: the optimizer reads .grad during step() and keeps nothing.
            g = g.detach().reshape(-1).to(device=dev, dtype=torch.float32)
            # One reduction catches NaN/inf (they propagate into the sum); the full check runs
            # only when the sum is not finite, to tell overflow of a finite vector apart.
            if not math.isfinite(float(g.sum())) and not bool(torch.isfinite(g).all()):
                raise NonFiniteLossError(
                    f"gradient with non-finite values (based on version {based_on_version}) arrived at "
                    f"parameter-server version {self.version}; stopping")
            staleness = self.version - based_on_version
            self.staleness_counts[staleness] = self.staleness_counts.get(staleness, 0) + 1
            self._pending_staleness.append(staleness)
            scale = 1.0
            if staleness > self.ps_cfg.max_staleness:
                if self.ps_cfg.stale_policy == "drop":
                    self.dropped_stale_gradients += 1
                    return ApplyResult(applied=False, staleness=staleness, scale=0.0)
                g = g / staleness  # staleness > max_staleness >= 0, so >= 1
                scale = 1.0 / staleness
            # Each .grad becomes a view of the flat gradient (no copies); every apply sets all
            # of them again, so no zero_grad is needed between steps.
            for p, view in zip(self._ordered, g.split(self._numels)):
                view = view.view_as(p)
                p.grad = view if view.dtype == p.dtype else view.to(p.dtype)
            self.optimizer.step()
            self.version += 1
            self.applied_updates += 1
            self._update_target()
            return ApplyResult(applied=True, staleness=staleness, scale=scale)

    def _update_target(self) -> None:
        if update_target(list(self.target.parameters()), list(self.network.parameters()), self.applied_updates,
                         self.learner_cfg):
            self.target_version += 1

    def get_target(self, newer_than: int = -1) -> tuple[int, np.ndarray] | None:
        """``(target_version, copy of target params)`` if ``target_version > newer_than``, else None.

        ``target_version`` starts at 0 (the target equals ``initial``) and increases by one
        at every target change. Params: ``[P]`` float32 numpy, :func:`distdqn.core.flat_params`
        layout.

        Raises:
            RuntimeError: publish mode (the learner owns the target there).
        """
        self._require_gradient_mode("get_target")
        with self._lock:
            if self.target_version <= newer_than:
                return None
            if self._target_cache is None or self._target_cache[0] != self.target_version:
                self._target_cache = (self.target_version, flat_params(self.target))
            return self.target_version, self._target_cache[1].copy()

    def staleness_mean(self) -> float:
        """Mean staleness over every gradient that arrived (applied or dropped); 0.0 if none."""
        with self._lock:
            n = sum(self.staleness_counts.values())
            if n == 0:
                return 0.0
            return sum(s * c for s, c in self.staleness_counts.items()) / n

    def pop_staleness(self) -> list[int]:
        """Staleness of every gradient that arrived since the last call, in arrival order (for
        metrics); clears the list."""
        with self._lock:
            out, self._pending_staleness = self._pending_staleness, []
            return out

    def _require_gradient_mode(self, what: str) -> None:
        if not self.gradient_mode:
            raise RuntimeError(f"{what} needs the parameter server in gradient mode (built with a network)")

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        """Plain tensors / Python scalars / dicts (survives ``torch.load(weights_only=True)``).

        Both modes: ``params`` (``[P]`` float32 tensor) and ``version``. Gradient mode adds
        ``optimizer``, ``target`` (``[P]`` float32), ``target_version``, ``applied_updates``,
        ``dropped_stale_gradients`` and ``staleness_counts``.
        """
        with self._lock:
            if not self.gradient_mode:
                return {"params": torch.from_numpy(self._params.copy()), "version": self.version}
            return {
                "params": torch.from_numpy(flat_params(self.network)),
                "version": self.version,
                "target": torch.from_numpy(flat_params(self.target)),
                "target_version": self.target_version,
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "applied_updates": self.applied_updates,
                "dropped_stale_gradients": self.dropped_stale_gradients,
                "staleness_counts": dict(self.staleness_counts),
            }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`. A publish-mode server takes ``params`` and
        ``version`` from either mode's state.

        Raises:
            ValueError: a gradient-mode server given a publish-mode state (no optimizer state).
        """
        with self._lock:
            if not self.gradient_mode:
                self._params[...] = state["params"].numpy()
                self.version = int(state["version"])
                return
            if "optimizer" not in state:
                raise ValueError("gradient-mode parameter server needs a gradient-mode state "
                                 "(optimizer, target, counters); got a publish-mode one")
            load_flat_params(self.network, state["params"])
            load_flat_params(self.target, state["target"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.version = int(state["version"])
            self.target_version = int(state["target_version"])
            self.applied_updates = int(state["applied_updates"])
            self.dropped_stale_gradients = int(state["dropped_stale_gradients"])
            self.staleness_counts = {int(k): int(v) for k, v in state["staleness_counts"].items()}
            self._pending_staleness = []
            self._cache = None
            self._target_cache = None

