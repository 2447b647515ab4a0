"""R2D2's loss (Kapturowski et al. 2019, sec. 2.3 and 3): n-step double-Q targets under the
invertible value rescaling, on sequences unrolled from their stored state after a burn-in
that receives no gradient; priorities mixed from the sequence's TD errors.

For a sequence of T steps (:mod:`distdqn.agents.r2d2.sequence`) with burn-in B, the trained
steps are t = B..T-1 with ``mask`` 1. With m the steps to the first of: n, the episode's end,
the sequence's end,

    y_t = h( sum_{k<m} gamma^k r_{t+k} + [not terminated] gamma^m h^-1(Q_target(s_{t+m}, a*)) ),
    a* = argmax_a Q_online(s_{t+m}, a)        (double Q, van Hasselt et al. 2016),

and the loss is the importance-weighted mean over sequences of the mean squared TD error
over their trained steps (Kapturowski et al. use the squared error; ``learner.loss: huber``
is accepted too). Priority p = eta max_t |delta_t| + (1 - eta) mean_t |delta_t|.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from distdqn.agents.r2d2.rescale import h, h_inv
from distdqn.core import Batch, LossOutput


def mixed_priorities(td_abs: torch.Tensor, mask: torch.Tensor, eta: float) -> torch.Tensor:
    """``[B]`` eta max|delta| + (1 - eta) mean|delta| over each row's masked steps
    (``td_abs``, ``mask`` ``[B, L]``; a row without steps gets 0)."""
    m = mask.float()
    count = m.sum(dim=1)
    mean = (td_abs * m).sum(dim=1) / count.clamp(min=1.0)
    mx = (td_abs * m).amax(dim=1)
    return torch.where(count > 0, eta * mx + (1.0 - eta) * mean, torch.zeros_like(mean))


def unroll(net: nn.Module, batch: Batch, burn_in: int) -> torch.Tensor:
    """``[B, T + 1 - burn_in, A]`` Q-values of ``net`` for the steps after the burn-in,
    unrolled from the stored state; the burn-in runs without gradient."""
    d = batch.data
    state = (d["h0"], d["c0"])
    if burn_in > 0:
        with torch.no_grad():
            _, state = net(d["obs"][:, :burn_in], d["prev_action"][:, :burn_in], d["prev_reward"][:, :burn_in], state)
        state = (state[0].detach(), state[1].detach())
    q, _ = net(d["obs"][:, burn_in:], d["prev_action"][:, burn_in:], d["prev_reward"][:, burn_in:], state)
    return q


def n_step_targets(q_online: torch.Tensor, q_target: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor,
                   mask: torch.Tensor, n_step: int, gamma: float, eps: float) -> torch.Tensor:
    """``[B, L]`` rescaled targets y_t of the L trained steps (module docstring).

    Args:
        q_online, q_target: ``[B, L + 1, A]`` Q-values of the trained steps and the
            observation after the last one.
        reward, terminated, mask: ``[B, L]`` of the trained steps.
    """
    b, steps = reward.shape
    boot = h_inv(q_target.gather(2, q_online.argmax(dim=2, keepdim=True)).squeeze(2), eps)  # [B, L+1]
    t = torch.arange(steps, device=reward.device)
    ret, disc = torch.zeros_like(reward), torch.ones_like(reward)
    taken = torch.zeros(b, steps, dtype=torch.long, device=reward.device)  # m
    terminal = torch.zeros_like(reward)
    open_ = mask.float()
    for k in range(n_step):
        j = (t + k).clamp(max=steps - 1)
        take = open_ * (t + k < steps).float() * mask[:, j]  # step t+k is in t's window
        ret = ret + take * disc * reward[:, j]
        disc = torch.where(take > 0, disc * gamma, disc)
        taken = taken + take.long()
        terminal = torch.maximum(terminal, take * terminated[:, j])
        open_ = take * (1.0 - terminated[:, j])
    # the window stopped at t + m: n steps, the episode's end (a truncated episode's final
    # observation sits there) or the sequence's end (the observation after it)
    bootstrap = boot.gather(1, (t + taken).clamp(max=steps)) * (1.0 - terminal)
    return h(ret + disc * bootstrap, eps)


def r2d2_loss(online: nn.Module, target: nn.Module, batch: Batch, autocast: contextlib.AbstractContextManager | None = None,
              *, burn_in: int, n_step: int, gamma: float, eta: float, eps: float, kind: str = "mse") -> LossOutput:
    """The loss of a batch of sequences (module docstring); priorities ``[B]``."""
    d = batch.data
    q = unroll(online, batch, burn_in)  # [B, L+1, A]
    with torch.no_grad():
        q_t = unroll(target, batch, burn_in)
        y = n_step_targets(q.detach(), q_t, d["reward"][:, burn_in:].float(), d["terminated"][:, burn_in:].float(),
                           d["mask"][:, burn_in:].float(), n_step, gamma, eps)
    mask = d["mask"][:, burn_in:].float()
    q_sa = q[:, :-1].gather(2, d["action"][:, burn_in:].unsqueeze(2)).squeeze(2)
    td = q_sa - y
    if kind == "huber":
        per = nn.functional.smooth_l1_loss(q_sa, y, reduction="none")
    else:
        per = 0.5 * td * td
    per_seq = (per * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    loss = (batch.weights.to(per_seq.dtype) * per_seq).mean()
    prio = mixed_priorities(td.detach().abs(), mask, eta)
    return LossOutput(loss=loss, priorities=prio, metrics={"q_mean": float((q_sa.detach() * mask).sum() / mask.sum().clamp(min=1.0))})
