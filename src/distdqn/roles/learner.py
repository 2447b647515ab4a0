"""The Learner role: one generic SGD learner fed the agent's loss (as Acme's learners are):
online and target networks in flat buffers, the optimizer, gradient clipping."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from distdqn.config import LearnerConfig
from distdqn.core import Batch, LearnOutput, NonFiniteLossError, as_flat_tensor
from distdqn.roles.optim import FlatOptimizer, flatten_parameters, update_target


def auto_uses_cuda(network: str) -> bool:
    """Whether ``learner.device: auto`` wants CUDA for a learner of this (resolved)
    ``network.kind``: the Nature CNN yes, an MLP no (see ``LearnerConfig.device``)."""
    return network == "nature_cnn"


def resolve_device(name: str, network: str) -> torch.device:
    """``learner.device`` as a torch device for a learner of ``network`` (its resolved
    ``network.kind``): ``auto`` -> CUDA when :func:`auto_uses_cuda` and a GPU is present,
    else CPU. Raises ValueError for ``cuda`` without a GPU."""
    if name == "auto":
        return torch.device("cuda" if auto_uses_cuda(network) and torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("learner.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def _flat_copy(buf: torch.Tensor) -> np.ndarray:
    """A flat buffer as a new float32 CPU numpy vector."""
    return buf.detach().to(device="cpu", dtype=torch.float32, copy=True).numpy()


def _load_flat(buf: torch.Tensor, flat: np.ndarray | torch.Tensor) -> None:
    """Copy a flat vector into a flat buffer in one op. Raises ValueError on a wrong length."""
    src = as_flat_tensor(flat).reshape(-1)
    if src.numel() != buf.numel():
        raise ValueError(f"flat parameter vector has {src.numel()} values, network needs {buf.numel()}")
    with torch.no_grad():
        buf.copy_(src)


def _to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """CPU -> ``dev``; to a GPU through pinned (page-locked) memory with a non-blocking copy."""
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


class Learner:
    """A learner that owns its optimizer and minimizes the agent's loss (Ape-X: applies its
    own updates).

    The online (and target) parameters live in one flat buffer in ``state_dict`` order
    (:func:`~distdqn.roles.optim.flatten_parameters`): the optimizer steps one tensor,
    gradient clipping takes one norm, and the target update is one copy.

    :meth:`learn` is one full step. For Gorila (Nair et al. 2015) and synchronous
    data-parallel SGD the step splits into :meth:`compute_gradients` (flat ``[P]`` gradient,
    no step) and :meth:`apply_gradients`; :meth:`set_params` / :meth:`set_target_params`
    load parameters pulled from a parameter server.

    On CPU with ``cfg.flush_denormal`` (the default) the constructor turns on
    ``torch.set_flush_denormal`` for the whole process.

    Args:
        cfg: learner config.
        network: the online network (moved to ``device``); the target network is a copy.
        device: where learning happens.
        loss: the agent's loss, ``loss(online, target, batch, autocast=...) -> LossOutput``
            (a pure function, e.g. :func:`distdqn.agents.dqn.loss.dqn_loss`); None: DQN's,
            with ``cfg.double_dqn`` and ``cfg.loss``.
    """

    def __init__(self, cfg: LearnerConfig, network: nn.Module, device: torch.device,
                 loss: Callable[..., Any] | None = None):
        self.cfg, self.device = cfg, device
        if loss is None:
            from distdqn.agents.dqn.loss import dqn_loss

            loss = functools.partial(dqn_loss, double_dqn=cfg.double_dqn, kind=cfg.loss)
        self.loss = loss
        if device.type == "cpu" and cfg.flush_denormal:
            torch.set_flush_denormal(True)  # process-wide: see LearnerConfig.flush_denormal
        self.online = network.to(device)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        params = self._params_in_state_dict_order()
        self._flat, self._grad = flatten_parameters(params)
        self._target_flat, _ = flatten_parameters(self._params_in_state_dict_order(self.target))
        self.optimizer = FlatOptimizer(cfg, self._flat)
        self.updates = 0

    def learn(self, batch: Batch) -> LearnOutput:
        """One optimizer step on ``batch``.

        Returns:
            :class:`LearnOutput` with the loss's ``[B]`` priorities (DQN: |TD error|) and
            metrics: the loss (``td_loss`` for DQN), the loss's own (``q_mean``), ``grad_norm``.

        Raises:
            NonFiniteLossError: the loss is NaN or inf (names the update number); parameters
                are left untouched.
        """
        priorities, metrics = self._loss_backward(batch)
        self.optimizer.step()
        self.updates += 1
        self._update_target()
        return LearnOutput(metrics=metrics, priorities=priorities)

    def compute_gradients(self, batch: Batch) -> LearnOutput:
        """The (clipped) gradient of the loss on ``batch`` at the current online parameters,
        without an optimizer step.

        Used by the Gorila topology (Nair et al. 2015, sec. 3: learners send gradients to the
        parameter server) and by synchronous data-parallel SGD (gradients all-reduced across
        learners, then applied with :meth:`apply_gradients`). Gradient-norm clipping is the
        same as in :meth:`learn`, applied to this learner's local gradient. Parameters,
        optimizer state, the target network and ``updates`` are unchanged; the ``.grad`` of
        the online parameters is left zeroed.

        Returns:
            :class:`LearnOutput` with ``priorities`` and ``metrics`` as in :meth:`learn`, and ``grads``: ``[P]`` float32 CPU tensor, the gradient flattened in
            ``state_dict`` order (the layout of :func:`distdqn.core.flat_params`).

        Raises:
            NonFiniteLossError: the loss is NaN or inf (names the update number it would have
                been).
        """
        priorities, metrics = self._loss_backward(batch)
        grads = self._grad.to(device="cpu", dtype=torch.float32, copy=True)
        self._grad.zero_()
        return LearnOutput(metrics=metrics, priorities=priorities, grads=grads)

    def apply_gradients(self, grads: np.ndarray | torch.Tensor) -> None:
        """One optimizer step with a given flat gradient, then the target update of :meth:`learn`.

        For synchronous data-parallel SGD every learner applies the same all-reduced gradient
        with its own optimizer, so replicas that start equal stay equal. ``compute_gradients``
        followed by ``apply_gradients(out.grads)`` is bit-identical to ``learn`` on the same batch.

        Args:
            grads: ``[P]`` float gradient in ``state_dict`` order (as returned in
                :attr:`LearnOutput.grads`); copied, not kept.

        Raises:
            ValueError: wrong length.
            NonFiniteLossError: a NaN or inf value (names the update number); nothing changes.
        """
        g = torch.as_tensor(grads)
        if g.numel() != self._grad.numel():
            raise ValueError(f"gradient vector has {g.numel()} values, network needs {self._grad.numel()}")
        g = g.detach().reshape(-1)
        if not bool(torch.isfinite(g).all()):
            raise NonFiniteLossError(f"gradient has non-finite values at update {self.updates + 1}; stopping")
        self._grad.copy_(g)
        self.optimizer.step()
        self._grad.zero_()
        self.updates += 1
        self._update_target()

    def _params_in_state_dict_order(self, module: nn.Module | None = None) -> list[nn.Parameter]:
        """The parameters of ``module`` (default: the online network) in ``state_dict``
        order, the layout of :func:`distdqn.core.flat_params`.

        Raises:
            ValueError: the network has buffers or shared parameters (no flat layout)."""
        module = self.online if module is None else module
        named = dict(module.named_parameters())
        keys = list(module.state_dict().keys())
        if keys != list(named.keys()):
            raise ValueError("the learner needs a Q-network without buffers or shared parameters "
                             f"(state_dict keys {keys} vs parameters {list(named)})")
        return [named[k] for k in keys]

    def _loss_backward(self, batch: Batch) -> tuple[np.ndarray | None, dict[str, float]]:
        """Forward, loss, backward and gradient clipping: leaves the gradient in ``.grad``.

        Returns ``([B] float32 priorities or None, metrics)``. Raises NonFiniteLossError before
        touching any gradient when the loss is not finite.
        """
        dev = self.device
        on_dev = batch if dev.type == "cpu" else Batch(
            data={k: _to_device(t, dev) for k, t in batch.data.items()}, keys=batch.keys,
            weights=_to_device(batch.weights, dev), probs=batch.probs)
        # Optional bf16 autocast for the forward passes; the loss is computed in float32. (A
        # disabled autocast context still costs time per update: none is entered.)
        amp = torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if self.cfg.mixed_precision else None
        out = self.loss(self.online, self.target, on_dev, autocast=amp)
        loss_value = float(out.loss.detach())
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"{out.name} is {loss_value} at update {self.updates + 1}; stopping")
        self._grad.zero_()
        out.loss.backward()
        grad_norm = float(torch.linalg.vector_norm(self._grad))
        if self.cfg.max_grad_norm is not None:
            # The rule of torch.nn.utils.clip_grad_norm_ (scale by max_norm / (norm + 1e-6) when
            # that is below 1), on the one flat gradient: its per-tensor grouping costs more than
            # the norm itself.
            coef = self.cfg.max_grad_norm / (grad_norm + 1e-6)
            if coef < 1.0:
                self._grad.mul_(coef)
        metrics = {out.name: loss_value, **out.metrics, "grad_norm": grad_norm}
        priorities = None if out.priorities is None else out.priorities.float().cpu().numpy()
        return priorities, metrics

    def _update_target(self) -> None:
        update_target([self._target_flat], [self._flat], self.updates, self.cfg)

    def get_params(self) -> np.ndarray:
        """Online parameters as one flat float32 CPU vector (a copy)."""
        return _flat_copy(self._flat)

    def set_params(self, flat: np.ndarray | torch.Tensor) -> None:
        """Overwrite the online parameters with a flat vector (layout of :func:`flat_params`),
        e.g. pulled from the parameter server. Optimizer state, target and ``updates`` are kept.

        Raises:
            ValueError: wrong length.
        """
        _load_flat(self._flat, flat)

    def set_target_params(self, flat: np.ndarray | torch.Tensor) -> None:
        """Overwrite the target parameters with a flat vector (layout of :func:`flat_params`).

        Raises:
            ValueError: wrong length.
        """
        _load_flat(self._target_flat, flat)

    def get_target_params(self) -> np.ndarray:
        """Target parameters as one flat float32 CPU vector (a copy)."""
        return _flat_copy(self._target_flat)

    def state_dict(self) -> dict:
        return {
            "online": self.online.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
