"""The IMPALA loss (Espeholt et al. 2018, sec. 4.2), a pure function of a batch of unrolls.

loss = pg_loss + value_coef * value_loss - entropy_coef * entropy, means over the T x B
steps, with

- pg_loss = -mean(pg_advantage_s * log pi(a_s | x_s)), the V-trace policy-gradient
  advantage (:func:`~distdqn.agents.actor_critic.vtrace.vtrace`) held fixed;
- value_loss = 0.5 * mean((v_s - V(x_s))^2), V-trace targets v_s held fixed;
- entropy = mean(-sum_a pi(a | x_s) log pi(a | x_s)).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from distdqn.agents.actor_critic.vtrace import vtrace
from distdqn.core import Batch, LossOutput


def split_outputs(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's ``[..., A + 1]`` outputs as ``(logits [..., A], value [...])``."""
    return outputs[..., :-1], outputs[..., -1]


def impala_loss(online: nn.Module, target: nn.Module | None, batch: Batch, *, rho_bar: float = 1.0,
                c_bar: float = 1.0, rho_bar_pg: float = 1.0, value_coef: float = 0.5, entropy_coef: float = 0.01,
                autocast: contextlib.AbstractContextManager | None = None) -> LossOutput:
    """The IMPALA loss of ``batch`` (module docstring). ``target`` is unused (no target network).

    Args:
        online: the actor-critic network ``[N, *obs_shape] -> [N, A + 1]`` (logits, value).
        batch: unrolls (:mod:`~distdqn.agents.actor_critic.unroll`): ``obs`` and ``next_obs``
            ``[B, T, *obs_shape]``, the other fields ``[B, T]``, on the network's device.
        rho_bar, c_bar, rho_bar_pg: V-trace's truncation levels.
        value_coef, entropy_coef: the weights of the value loss and of the entropy bonus.
        autocast: context for the forward passes, or None.

    Returns:
        :class:`LossOutput` named ``impala_loss``, no priorities, metrics ``pg_loss``,
        ``value_loss``, ``policy_entropy``, ``vtrace_rho_mean``.
    """
    d = batch.data
    b, t = d["action"].shape
    obs = d["obs"].reshape(b * t, *d["obs"].shape[2:])
    next_obs = d["next_obs"].reshape(b * t, *d["next_obs"].shape[2:])
    with autocast if autocast is not None else contextlib.nullcontext():
        logits, values = split_outputs(online(obs).float())
        with torch.no_grad():
            _, next_values = split_outputs(online(next_obs).float())
    # time-major [T, B]
    logits = logits.reshape(b, t, -1).transpose(0, 1)
    values = values.reshape(b, t).transpose(0, 1)
    next_values = next_values.reshape(b, t).transpose(0, 1)
    action = d["action"].transpose(0, 1)
    log_probs = F.log_softmax(logits, dim=-1)
    logp = log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)
    vt = vtrace(logp.detach() - d["behaviour_logp"].transpose(0, 1), d["discount"].transpose(0, 1),
                d["reward"].transpose(0, 1), values.detach(), next_values, d["continues"].transpose(0, 1),
                rho_bar=rho_bar, c_bar=c_bar, rho_bar_pg=rho_bar_pg)
    pg_loss = -(vt.pg_advantages * logp).mean()
    value_loss = 0.5 * (vt.vs - values).pow(2).mean()
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1).mean()
    loss = pg_loss + value_coef * value_loss - entropy_coef * entropy
    return LossOutput(loss=loss, priorities=None, name="impala_loss",
                      metrics={"pg_loss": float(pg_loss.detach()), "value_loss": float(value_loss.detach()),
                               "policy_entropy": float(entropy.detach()),
                               "vtrace_rho_mean": float(vt.rhos.mean())})
