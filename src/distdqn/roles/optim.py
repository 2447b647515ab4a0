"""Optimizers on one flat parameter tensor: the whole network's update in one kernel."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.adam import adam as adam_update
from torch.optim.rmsprop import rmsprop as rmsprop_update

from distdqn.config import LearnerConfig

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
    in a process imports ``torch._dynamo``: seconds of CPU, which on a small machine delayed the
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
        """Load a state in torch.optim's layout with one parameter, copying its tensors.

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


def update_target(target: list[torch.Tensor], online: list[torch.Tensor], updates: int, cfg: LearnerConfig) -> bool:
    """The target network's update after ``updates`` optimizer steps: a hard copy every
    ``cfg.target_update_period`` updates (Mnih et al. 2015), or, with ``cfg.tau``, Polyak
    averaging theta' <- tau * theta + (1 - tau) * theta' every update (Lillicrap et al. 2016,
    Alg. 1). ``target`` and ``online`` are matching tensors (one flat buffer each, or one
    per parameter). Returns True when the target changed."""
    if cfg.tau is None and updates % cfg.target_update_period != 0:
        return False  # most updates: no grad-mode switch at all
    with torch.no_grad():
        for t, o in zip(target, online):
            if cfg.tau is None:
                t.copy_(o)
            else:
                t.lerp_(o, cfg.tau)
    return True
