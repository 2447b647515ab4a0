"""DQN's loss, as pure functions: nothing here mutates its inputs or holds state.

:func:`dqn_loss` is what the generic learner (:class:`distdqn.roles.learner.Learner`) calls:
the n-step double-DQN TD loss of a batch, with the |TD errors| as new priorities."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distdqn.core import Batch, LossOutput


def n_step_double_dqn_targets(
    reward: torch.Tensor,
    discount: torch.Tensor,
    q_next_online: torch.Tensor,
    q_next_target: torch.Tensor,
    double_dqn: bool = True,
) -> torch.Tensor:
    """n-step (double) DQN targets y = R + gamma^n * Q_target(s', argmax_a Q_online(s', a)).

    Double DQN: van Hasselt et al. 2016, "Deep Reinforcement Learning with Double
    Q-learning", eq. 4, with the n-step return of Sutton & Barto (2018, eq. 7.1) as in
    Hessel et al. 2018 (Rainbow, eq. 2). With ``double_dqn=False`` the max over the
    target network's values is used (Mnih et al. 2015).

    Args:
        reward: ``[B]`` float32 n-step discounted return sum_k gamma^k r_{t+k}.
        discount: ``[B]`` float32 gamma^n, 0 where the episode terminated (no bootstrap).
        q_next_online: ``[B, A]`` online-network Q(s', .).
        q_next_target: ``[B, A]`` target-network Q(s', .).

    Returns:
        ``[B]`` float32 targets, detached.
    """
    with torch.no_grad():
        if double_dqn:
            a_star = q_next_online.argmax(dim=1, keepdim=True)
            q_boot = q_next_target.gather(1, a_star).squeeze(1)
        else:
            q_boot = q_next_target.max(dim=1).values
        return reward + discount * q_boot


def td_loss(
    q: torch.Tensor,
    action: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    kind: Literal["huber", "mse"] = "huber",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-weighted TD loss.

    loss = mean_i w_i * l(y_i - Q(s_i, a_i)), l = Huber (delta 1; Mnih et al. 2015) or 0.5 x^2.
    Importance weights w_i from prioritized replay (Schaul et al. 2016, Alg. 1 line 10).

    Args:
        q: ``[B, A]`` online Q(s, .), with grad.
        action: ``[B]`` int64.
        target: ``[B]`` float32, no grad.
        weights: ``[B]`` float32 or None (all ones).
        kind: ``huber`` or ``mse``.

    Returns:
        ``(loss, td_abs)``: scalar loss with grad, and ``[B]`` |y - Q(s,a)| detached
        (new priorities).

    Raises:
        ValueError: unknown ``kind``.
    """
    q_sa = q.gather(1, action.long().unsqueeze(1)).squeeze(1)
    td = target - q_sa
    if kind == "huber":
        per = F.huber_loss(q_sa, target, reduction="none", delta=1.0)
    elif kind == "mse":
        per = 0.5 * td.pow(2)
    else:
        raise ValueError(f"loss kind must be 'huber' or 'mse', got {kind!r}")
    if weights is not None:
        per = per * weights
    return per.mean(), td.detach().abs()


def dqn_loss(online: nn.Module, target: nn.Module, batch: Batch, *, double_dqn: bool = True,
             kind: Literal["huber", "mse"] = "huber",
             autocast: contextlib.AbstractContextManager | None = None) -> LossOutput:
    """The importance-weighted n-step (double) DQN TD loss of ``batch``.

    Q(s, .) from the online network with grad; the bootstrap values without grad, from the
    target network at the online network's argmax (double DQN, van Hasselt et al. 2016,
    eq. 4) or its own max (Mnih et al. 2015): :func:`n_step_double_dqn_targets`, then
    :func:`td_loss`. The online pass over ``next_obs`` is separate from the one over ``obs``
    (not one over both), so that backward covers B rows, not 2B.

    Args:
        online, target: Q-networks ``[B, *obs_shape] -> [B, A]``.
        batch: ``obs``, ``action``, ``reward``, ``discount``, ``next_obs`` and ``weights``,
            on the networks' device (:mod:`distdqn.agents.dqn.spec`).
        double_dqn: double-DQN targets.
        kind: ``huber`` or ``mse``.
        autocast: context for the forward passes (bf16 autocast), or None; the targets and
            the loss are computed in float32 outside it.

    Returns:
        :class:`LossOutput` with ``[B]`` |TD error| priorities and ``q_mean``.
    """
    d = batch.data
    with autocast if autocast is not None else contextlib.nullcontext():
        q = online(d["obs"]).float()
        with torch.no_grad():
            q_next_online = online(d["next_obs"]).float() if double_dqn else None
            q_next_target = target(d["next_obs"]).float()
    y = n_step_double_dqn_targets(d["reward"], d["discount"],
                                  q_next_online if q_next_online is not None else q_next_target, q_next_target,
                                  double_dqn=double_dqn)
    loss, td_abs = td_loss(q, d["action"], y, batch.weights, kind)
    return LossOutput(loss=loss, priorities=td_abs, metrics={"q_mean": float(q.detach().mean())})
