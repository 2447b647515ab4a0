"""The Learner role: online and target networks, the loss and the optimizer."""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import torch
from torch import nn
from torch.optim.adam import adam as adam_update
from torch.optim.rmsprop import rmsprop as rmsprop_update

from distdqn.config import LearnerConfig
from distdqn.core import LearnOutput, NonFiniteLossError, SampledBatch, as_flat_tensor
from distdqn.losses import n_step_double_dqn_targets, td_loss


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


_ADAM_BETAS = (0.9, 0.999)
_RMSPROP = {"alpha": 0.95, "eps": 0.01, "centered": True, "momentum": 0.0}


def make_optimizer(cfg: LearnerConfig, params) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015) or RMSProp (as in Mnih et al. 2015; centered, as in Ape-X).

    Adam uses PyTorch's fused implementation when every parameter is float32 on CPU or CUDA
    (the same update in one kernel per step; for the default MLP on CPU about a quarter
    less time per update than the per-tensor loop)."""
    if cfg.optimizer == "adam":
        params = list(params)
        fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=cfg.learning_rate, betas=_ADAM_BETAS, eps=cfg.adam_epsilon, fused=fused)
    return torch.optim.RMSprop(params, lr=cfg.learning_rate, **_RMSPROP)


class FlatOptimizer:
    """The update of :func:`make_optimizer`'s optimizer on one flat parameter tensor, through
    torch.optim's functional form (``torch.optim.adam.adam``, ``torch.optim.rmsprop.rmsprop``):
    Adam (Kingma & Ba 2015, Alg. 1; the fused kernel for float32 on CPU or CUDA) or centered
    RMSProp (Graves 2013, eq. 38-41; as in Ape-X), with torch.optim's ``state_dict`` layout
    (one parameter, index 0). It skips the ``torch.optim.Optimizer`` class, whose first use
    in a process imports ``torch._dynamo``: about 2 s of CPU, which on 2 cores delayed the
    start of learning by about 1 s.

    Hyperparameters always come from the config (``learner.learning_rate`` etc.), also
    after :meth:`load_state_dict`.

    Args:
        cfg: learner config (``optimizer``, ``learning_rate``, ``adam_epsilon``).
        param: the flat ``[P]`` parameter (e.g. from :func:`flatten_parameters`); :meth:`step`
            reads its ``.grad``.
    """

    def __init__(self, cfg: LearnerConfig, param: torch.Tensor):
        self.cfg, self.param = cfg, param
        self.fused = cfg.optimizer == "adam" and param.dtype == torch.float32 and param.device.type in ("cpu", "cuda")
        self.state: dict[str, torch.Tensor] = {}

    def _init_state(self) -> None:
        p = self.param
        if self.cfg.optimizer == "adam":
            step_device = p.device if self.fused else torch.device("cpu")
            self.state = {"step": torch.zeros((), dtype=torch.float32, device=step_device),
                          "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        else:
            self.state = {"step": torch.zeros((), dtype=torch.float32), "square_avg": torch.zeros_like(p),
                          "grad_avg": torch.zeros_like(p)}

    @torch.no_grad()
    def step(self) -> None:
        """One update of ``param`` with ``param.grad``."""
        p, g, c = self.param, self.param.grad, self.cfg
        if g is None:
            raise ValueError("FlatOptimizer.step: the parameter has no gradient")
        if not self.state:
            self._init_state()
        st = self.state
        if c.optimizer == "adam":
            adam_update([p], [g], [st["exp_avg"]], [st["exp_avg_sq"]], [], [st["step"]],
                        fused=self.fused, amsgrad=False, beta1=_ADAM_BETAS[0], beta2=_ADAM_BETAS[1],
                        lr=c.learning_rate, weight_decay=0.0, eps=c.adam_epsilon, maximize=False)
        else:
            rmsprop_update([p], [g], [st["square_avg"]], [st["grad_avg"]], [], [st["step"]],
                           lr=c.learning_rate, alpha=_RMSPROP["alpha"], eps=_RMSPROP["eps"],
                           weight_decay=0.0, momentum=_RMSPROP["momentum"], centered=_RMSPROP["centered"])

    def _group(self) -> dict:
        c = self.cfg
        if c.optimizer == "adam":
            return {"lr": c.learning_rate, "betas": _ADAM_BETAS, "eps": c.adam_epsilon, "weight_decay": 0.0,
                    "amsgrad": False, "fused": self.fused}
        return {"lr": c.learning_rate, "weight_decay": 0.0, **_RMSPROP}

    def state_dict(self) -> dict:
        """``{"state": {0: {...}} (empty before the first step), "param_groups": [{..., "params": [0]}]}``,
        torch.optim's layout; the tensors are the live state (save or copy them)."""
        return {"state": {0: dict(self.state)} if self.state else {}, "param_groups": [{**self._group(), "params": [0]}]}

    def load_state_dict(self, state: dict) -> None:
        """Load a state in torch.optim's layout with one parameter (see
        :func:`flatten_optimizer_state` for per-tensor ones), copying its tensors.

        Raises:
            ValueError: more than one parameter, or the state of another optimizer or size.
        """
        ids = [i for g in state["param_groups"] for i in g["params"]]
        if len(ids) != 1:
            raise ValueError(f"optimizer state has {len(ids)} parameters, expected 1 (flat)")
        st = state["state"].get(ids[0], {})
        if not st:
            self.state = {}
            return
        self._init_state()
        if set(self.state) - set(st):
            raise ValueError(f"optimizer state has {sorted(st)}, learner.optimizer={self.cfg.optimizer} "
                             f"needs {sorted(self.state)}")
        for key, mine in self.state.items():
            src = torch.as_tensor(st[key])
            if src.shape != mine.shape:
                raise ValueError(f"optimizer state {key!r} has shape {tuple(src.shape)}, expected {tuple(mine.shape)}")
            mine.copy_(src)


def flatten_parameters(params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Move ``params`` into one flat buffer: afterwards each is a view of ``flat`` and its
    ``.grad`` a view of ``grad``, so one optimizer kernel, one norm and one copy cover the
    whole network (the per-tensor calls dominate a small network's update on CPU).

    Args:
        params: leaf tensors of one dtype and device, in the order of the flat layout
            (``state_dict`` order for :func:`distdqn.core.flat_params`).

    Returns:
        ``(flat, grad)``: ``flat`` an ``nn.Parameter`` ``[P]`` holding the values (``grad``
        set as its ``.grad``), ``grad`` ``[P]`` zeros. Backward accumulates into ``grad``
        in place as long as no ``.grad`` is set to None: zero ``grad`` instead.

    Raises:
        ValueError: mixed dtypes or devices, or no parameters.
    """
    if not params:
        raise ValueError("the network has no parameters")
    if len({(p.dtype, p.device) for p in params}) != 1:
        raise ValueError("flat parameters need one dtype and one device for every parameter")
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
    grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset : offset + n].view_as(p)
        if p.requires_grad:
            p.grad = grad[offset : offset + n].view_as(p)
        offset += n
    param = nn.Parameter(flat, requires_grad=any(p.requires_grad for p in params))
    if param.requires_grad:
        param.grad = grad
    return param, grad


def flatten_optimizer_state(state: dict, sizes: list[int]) -> dict:
    """An optimizer ``state_dict`` written for per-tensor parameters (checkpoints from before
    :func:`flatten_parameters`) as the state of one flat parameter: per-parameter tensors
    of ``sizes[i]`` values are concatenated in order, anything else (Adam's ``step``) is
    taken from the first parameter. A state that already has one parameter is returned
    unchanged.

    Raises:
        ValueError: the parameter count or a tensor's size does not match ``sizes``.
    """
    groups = state["param_groups"]
    ids = [i for g in groups for i in g["params"]]
    if len(ids) == 1:
        return state
    if len(ids) != len(sizes):
        raise ValueError(f"optimizer state has {len(ids)} parameters, the network {len(sizes)}")
    per = [state["state"].get(i, {}) for i in ids]
    merged: dict = {}
    if any(per):
        for key, first in per[0].items():
            if torch.is_tensor(first) and first.numel() == sizes[0] and first.dim() > 0:
                parts = [s[key].reshape(-1) for s in per]
                if [t.numel() for t in parts] != sizes:
                    raise ValueError(f"optimizer state {key!r} does not match the parameter sizes")
                merged[key] = torch.cat(parts)
            else:
                merged[key] = first
    group = {k: v for k, v in groups[0].items() if k != "params"}
    return {"state": {0: merged} if merged else {}, "param_groups": [{**group, "params": [0]}]}


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
    """Double-DQN n-step learner that owns its optimizer (Ape-X: applies its own updates).

    The online (and target) parameters live in one flat buffer in ``state_dict`` order
    (:func:`flatten_parameters`): the optimizer steps one tensor, gradient clipping takes
    one norm, and the target update is one copy.

    :meth:`learn` is one full step. For Gorila (Nair et al. 2015) and synchronous
    data-parallel SGD the step splits into :meth:`compute_gradients` (flat ``[P]`` gradient,
    no step) and :meth:`apply_gradients`; :meth:`set_params` / :meth:`set_target_params`
    load parameters pulled from a parameter server.

    On CPU with ``cfg.flush_denormal`` (the default) the constructor turns on
    ``torch.set_flush_denormal`` for the whole process.

    Args:
        cfg: learner config.
        network: the online Q-network (moved to ``device``); the target network is a copy.
        device: where learning happens.
    """

    def __init__(self, cfg: LearnerConfig, network: nn.Module, device: torch.device):
        self.cfg, self.device = cfg, device
        if device.type == "cpu" and cfg.flush_denormal:
            torch.set_flush_denormal(True)  # process-wide: see LearnerConfig.flush_denormal
        self.online = network.to(device)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        params = self._params_in_state_dict_order()
        self._sizes = [p.numel() for p in params]
        self._flat, self._grad = flatten_parameters(params)
        self._target_flat, _ = flatten_parameters(self._params_in_state_dict_order(self.target))
        self.optimizer = FlatOptimizer(cfg, self._flat)
        self.updates = 0

    def learn(self, batch: SampledBatch) -> LearnOutput:
        """One optimizer step on ``batch``.

        Returns:
            :class:`LearnOutput` with ``[B]`` |TD error| and metrics ``td_loss``, ``q_mean``,
            ``grad_norm``.

        Raises:
            NonFiniteLossError: the loss is NaN or inf (names the update number); parameters
                are left untouched.
        """
        td_abs, metrics = self._loss_backward(batch)
        self.optimizer.step()
        self.updates += 1
        self._update_target()
        return LearnOutput(td_abs=td_abs, metrics=metrics)

    def compute_gradients(self, batch: SampledBatch) -> LearnOutput:
        """The (clipped) gradient of the TD loss on ``batch`` at the current online parameters,
        without an optimizer step.

        Used by the Gorila topology (Nair et al. 2015, sec. 3: learners send gradients to the
        parameter server) and by synchronous data-parallel SGD (gradients all-reduced across
        learners, then applied with :meth:`apply_gradients`). Gradient-norm clipping is the
        same as in :meth:`learn`, applied to this learner's local gradient. Parameters,
        optimizer state, the target network and ``updates`` are unchanged; the ``.grad`` of
        the online parameters is left zeroed.

        Returns:
            :class:`LearnOutput` with ``td_abs`` (``[B]`` float32 numpy), ``metrics`` as in
            :meth:`learn`, and ``grads``: ``[P]`` float32 CPU tensor, the gradient flattened in
            ``state_dict`` order (the layout of :func:`distdqn.core.flat_params`).

        Raises:
            NonFiniteLossError: the loss is NaN or inf (names the update number it would have
                been).
        """
        td_abs, metrics = self._loss_backward(batch)
        grads = self._grad.to(device="cpu", dtype=torch.float32, copy=True)
        self._grad.zero_()
        return LearnOutput(td_abs=td_abs, metrics=metrics, grads=grads)

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

    def _loss_backward(self, batch: SampledBatch) -> tuple[np.ndarray, dict[str, float]]:
        """Forward, loss, backward and gradient clipping: leaves the gradient in ``.grad``.

        Returns ``([B] float32 |TD error|, metrics)``. Raises NonFiniteLossError before
        touching any gradient when the loss is not finite.
        """
        dev = self.device
        obs, next_obs, action, reward, discount, weights = (
            _to_device(t, dev) for t in (batch.obs, batch.next_obs, batch.action, batch.reward,
                                          batch.discount, batch.weights))
        # Optional bf16 autocast for the forward passes; the loss is computed in float32. (A
        # disabled autocast context still costs about 14 us per update on CPU.)
        amp = torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if self.cfg.mixed_precision \
            else contextlib.nullcontext()
        with amp:
            q = self.online(obs).float()
            with torch.no_grad():
                # Separate pass, not one over cat([obs, next_obs]): backward then covers B rows, not 2B.
                q_next_online = self.online(next_obs).float() if self.cfg.double_dqn else None
                q_next_target = self.target(next_obs).float()
        target = n_step_double_dqn_targets(
            reward, discount, q_next_online if q_next_online is not None else q_next_target, q_next_target,
            double_dqn=self.cfg.double_dqn,
        )
        loss, td_abs = td_loss(q, action, target, weights, self.cfg.loss)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"td_loss is {loss_value} at update {self.updates + 1}; stopping")
        self._grad.zero_()
        loss.backward()
        grad_norm = float(torch.linalg.vector_norm(self._grad))
        if self.cfg.max_grad_norm is not None:
            # The rule of torch.nn.utils.clip_grad_norm_ (scale by max_norm / (norm + 1e-6) when
            # that is below 1), on the one flat gradient: its per-tensor grouping cost more than
            # the norm itself here (about 70 us against 5 us per update).
            coef = self.cfg.max_grad_norm / (grad_norm + 1e-6)
            if coef < 1.0:
                self._grad.mul_(coef)
        metrics = {"td_loss": loss_value, "q_mean": float(q.detach().mean()), "grad_norm": grad_norm}
        return td_abs.float().cpu().numpy(), metrics

    def _update_target(self) -> None:
        tau = self.cfg.tau
        with torch.no_grad():
            if tau is None:
                if self.updates % self.cfg.target_update_period == 0:
                    self._target_flat.copy_(self._flat)
                return
            self._target_flat.lerp_(self._flat, tau)  # Polyak averaging (Lillicrap et al. 2016, Alg. 1)

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
        # Checkpoints written before the flat layout hold one optimizer entry per tensor.
        self.optimizer.load_state_dict(flatten_optimizer_state(state["optimizer"], self._sizes))
        self.updates = int(state["updates"])
