"""The Learner role: online and target networks, the loss and the optimizer."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from distdqn.config import LearnerConfig
from distdqn.core import LearnOutput, NonFiniteLossError, SampledBatch, flat_params
from distdqn.losses import n_step_double_dqn_targets, td_loss


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Raises ValueError for ``cuda`` without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("learner.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def make_optimizer(cfg: LearnerConfig, params) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015) or RMSProp (as in Mnih et al. 2015; centered, as in Ape-X)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, eps=cfg.adam_epsilon)
    return torch.optim.RMSprop(params, lr=cfg.learning_rate, alpha=0.95, eps=0.01, centered=True)


class Learner:
    """Double-DQN n-step learner that owns its optimizer (Ape-X: applies its own updates).

    Args:
        cfg: learner config.
        network: the online Q-network (moved to ``device``); the target network is a copy.
        device: where learning happens.
    """

    def __init__(self, cfg: LearnerConfig, network: nn.Module, device: torch.device):
        self.cfg, self.device = cfg, device
        self.online = network.to(device)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        self.optimizer = make_optimizer(cfg, self.online.parameters())
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
        dev = self.device
        nb = dev.type == "cuda"
        obs = batch.obs.to(dev, non_blocking=nb)
        next_obs = batch.next_obs.to(dev, non_blocking=nb)
        action = batch.action.to(dev, non_blocking=nb)
        reward = batch.reward.to(dev, non_blocking=nb)
        discount = batch.discount.to(dev, non_blocking=nb)
        weights = batch.weights.to(dev, non_blocking=nb)
        b = obs.shape[0]
        if self.cfg.double_dqn:
            q_all = self.online(torch.cat([obs, next_obs], dim=0))
            q, q_next_online = q_all[:b], q_all[b:].detach()
        else:
            q = self.online(obs)
            q_next_online = None
        with torch.no_grad():
            q_next_target = self.target(next_obs)
        target = n_step_double_dqn_targets(
            reward, discount, q_next_online if q_next_online is not None else q_next_target, q_next_target,
            double_dqn=self.cfg.double_dqn,
        )
        loss, td_abs = td_loss(q, action, target, weights, self.cfg.loss)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"td_loss is {loss_value} at update {self.updates + 1}; stopping")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.max_grad_norm is not None:
            grad_norm = float(nn.utils.clip_grad_norm_(self.online.parameters(), self.cfg.max_grad_norm))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in self.online.parameters() if p.grad is not None])))
        self.optimizer.step()
        self.updates += 1
        self._update_target()
        return LearnOutput(
            td_abs=td_abs.float().cpu().numpy(),
            metrics={"td_loss": loss_value, "q_mean": float(q.detach().mean()), "grad_norm": grad_norm},
        )

    def _update_target(self) -> None:
        tau = self.cfg.tau
        if tau is None:
            if self.updates % self.cfg.target_update_period == 0:
                self.target.load_state_dict(self.online.state_dict())
            return
        with torch.no_grad():  # Polyak averaging (Lillicrap et al. 2016, Alg. 1)
            for t, o in zip(self.target.parameters(), self.online.parameters()):
                t.lerp_(o, tau)

    def get_params(self) -> np.ndarray:
        """Online parameters as one flat float32 CPU vector."""
        return flat_params(self.online)

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
