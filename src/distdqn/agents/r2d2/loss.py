"""R2D2's loss (Kapturowski et al. 2019, sec. 2.3 and 3): n-step double-Q targets under the
invertible value rescaling, on sequences unrolled from their stored state after a burn-in
that receives no gradient; priorities mixed from the sequence's TD errors.

For a sequence of T steps (:mod:`distdqn.agents.r2d2.sequence`) with burn-in B, the trained
steps are t = B..T-1 with ``mask`` 1. A sequence that starts at its episode's start
(``prev_action[0] == -1``) starts from the exact state, the zero state the actor acted from,
so it needs no burn-in: its steps 0..B-1 are trained too. Without that an episode's first B
steps would be trained by no sequence, and an episode shorter than B (CartPole's early
failures) would teach nothing. With m the steps to the first of: n, the episode's end,
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


def episode_starts(batch: Batch) -> torch.Tensor:
    """``[B]`` bool: the sequences that start at their episode's start (no previous action)."""
    return batch.data["prev_action"][:, 0] < 0


def trained_steps(batch: Batch, burn_in: int) -> torch.Tensor:
    """``[B, T]`` float: 1 at the steps the loss trains (module docstring)."""
    d = batch.data
    mask = d["mask"].float()
    after = (torch.arange(mask.shape[1], device=mask.device) >= burn_in).unsqueeze(0)
    return mask * (after | episode_starts(batch).unsqueeze(1)).float()


def unroll(net: nn.Module, batch: Batch, burn_in: int) -> torch.Tensor:
    """``[B, T + 1, A]`` Q-values of ``net`` for every step and the observation after the
    last, unrolled from the stored state. Under autograd, the burn-in of a sequence that
    starts inside its episode runs without gradient, and the state after it is detached;
    one that starts at its episode's start gets gradient through it (module docstring)."""
    d = batch.data
    state = (d["h0"], d["c0"])
    inputs = (d["obs"], d["prev_action"], d["prev_reward"])
    if burn_in <= 0 or not torch.is_grad_enabled():
        return net(*inputs, state)[0]
    head = tuple(x[:, :burn_in] for x in inputs)
    with torch.no_grad():
        q_burn, state = net(*head, state)
    first = torch.nonzero(episode_starts(batch)).squeeze(1)
    if first.numel():
        q_first, s_first = net(*(x[first] for x in head), (d["h0"][first], d["c0"][first]))
        q_burn = q_burn.index_put((first,), q_first)
        state = (state[0].index_put((first,), s_first[0]), state[1].index_put((first,), s_first[1]))
    q, _ = net(*(x[:, burn_in:] for x in inputs), state)
    return torch.cat([q_burn, q], dim=1)


def n_step_targets(q_online: torch.Tensor, q_target: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor,
                   mask: torch.Tensor, n_step: int, gamma: float, eps: float) -> torch.Tensor:
    """``[B, L]`` rescaled targets y_t of L steps (module docstring); a window stops at the
    first step with ``mask`` 0, and a step with ``mask`` 0 gets no window.

    Args:
        q_online, q_target: ``[B, L + 1, A]`` Q-values of the steps and the observation
            after the last one.
        reward, terminated, mask: ``[B, L]``.
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


def r2d2_loss(online: nn.Module, target: nn.Module, batch: Batch,
              autocast: contextlib.AbstractContextManager | None = None, *, burn_in: int, n_step: int, gamma: float, eta: float, eps: float, kind: str = "mse") -> LossOutput:
    """The loss of a batch of sequences (module docstring); priorities ``[B]``. ``autocast``
    (``learner.mixed_precision``) covers the unrolls; targets and loss are float32."""
    d = batch.data
    with autocast if autocast is not None else contextlib.nullcontext():
        q = unroll(online, batch, burn_in).float()  # [B, T+1, A]
        with torch.no_grad():
            q_t = unroll(target, batch, burn_in).float()
    mask = trained_steps(batch, burn_in)  # [B, T]
    with torch.no_grad():
        # windows look forward only, so the trained steps' mask also ends them at the episode's end
        y = n_step_targets(q.detach(), q_t, d["reward"].float(), d["terminated"].float(), mask, n_step, gamma, eps)
    q_sa = q[:, :-1].gather(2, d["action"].unsqueeze(2)).squeeze(2)
    td = q_sa - y
    if kind == "huber":
        per = nn.functional.smooth_l1_loss(q_sa, y, reduction="none")
    else:
        per = 0.5 * td * td
    per_seq = (per * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    loss = (batch.weights.to(per_seq.dtype) * per_seq).mean()
    prio = mixed_priorities(td.detach().abs(), mask, eta)
    q_mean = float((q_sa.detach() * mask).sum() / mask.sum().clamp(min=1.0))
    return LossOutput(loss=loss, priorities=prio, metrics={"q_mean": q_mean})
