"""V-trace off-policy targets (Espeholt et al. 2018, "IMPALA", sec. 4.1, eq. 1) as a pure
function of time-major tensors.

For an unroll x_s .. x_{s+n} collected by a behaviour policy mu and learned by pi, with
truncated importance weights rho_t = min(rho_bar, pi/mu) and c_t = min(c_bar, pi/mu),

    v_s = V(x_s) + sum_{t=s}^{s+n-1} (prod_{i=s}^{t-1} gamma_i c_i) delta_t,
    delta_t = rho_t (r_t + gamma_t V(x_{t+1}) - V(x_t)),

computed backwards as v_s - V(x_s) = delta_s + gamma_s c_s (v_{s+1} - V(x_{s+1})) (eq. 1
and its recursive form, Remark 1). The policy-gradient advantage is
rho_pg_s (r_s + gamma_s v_{s+1} - V(x_s)) with rho_pg_s = min(rho_bar_pg, pi/mu) (sec. 4.2).

Unrolls may cross episode ends. ``discounts`` carry gamma_t (0 where the episode
terminated at step t); ``continues`` is 0 where step t ended its episode, terminated *or*
truncated, so no correction flows back across the boundary. A truncated step bootstraps
from ``next_values`` (the value of its final observation), as DQN's adder does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class VTrace(NamedTuple):
    vs: torch.Tensor
    """``[T, B]`` V-trace value targets v_s."""
    pg_advantages: torch.Tensor
    """``[T, B]`` rho_pg_s (r_s + gamma_s v_{s+1} - V(x_s))."""
    rhos: torch.Tensor
    """``[T, B]`` the untruncated importance ratios pi/mu (for metrics)."""


def vtrace(log_rhos: torch.Tensor, discounts: torch.Tensor, rewards: torch.Tensor, values: torch.Tensor,
           next_values: torch.Tensor, continues: torch.Tensor, rho_bar: float = 1.0, c_bar: float = 1.0,
           rho_bar_pg: float = 1.0) -> VTrace:
    """V-trace targets and policy-gradient advantages (module docstring). No gradient flows
    through the results (they are targets).

    Args:
        log_rhos: ``[T, B]`` log pi(a_t|x_t) - log mu(a_t|x_t).
        discounts: ``[T, B]`` gamma_t: gamma, or 0 where the episode terminated at step t.
        rewards: ``[T, B]`` r_t.
        values: ``[T, B]`` V(x_t).
        next_values: ``[T, B]`` V(x_{t+1}): the value of step t's next observation (its
            final observation where the episode ended at t).
        continues: ``[T, B]`` 1 where step t+1 continues step t's episode, else 0.
        rho_bar, c_bar, rho_bar_pg: the truncation levels (IMPALA's defaults: 1.0).

    Returns:
        :class:`VTrace`, every tensor ``[T, B]`` float32 like the inputs.

    Raises:
        ValueError: inputs of different shapes, or not 2-D.
    """
    shape = log_rhos.shape
    for name, t in (("discounts", discounts), ("rewards", rewards), ("values", values),
                    ("next_values", next_values), ("continues", continues)):
        if t.shape != shape:
            raise ValueError(f"vtrace: {name} has shape {tuple(t.shape)}, log_rhos {tuple(shape)}")
    if len(shape) != 2:
        raise ValueError(f"vtrace: inputs must be [T, B], got {tuple(shape)}")
    with torch.no_grad():
        rhos = torch.exp(log_rhos)
        clipped_rhos = torch.clamp(rhos, max=rho_bar)
        cs = torch.clamp(rhos, max=c_bar)
        deltas = clipped_rhos * (rewards + discounts * next_values - values)
        carry = discounts * cs * continues
        acc = torch.zeros_like(values[0])
        corrections = torch.empty_like(values)  # v_s - V(x_s)
        for t in range(shape[0] - 1, -1, -1):
            acc = deltas[t] + carry[t] * acc
            corrections[t] = acc
        vs = values + corrections
        # v_{s+1}: the next step's target inside an episode; the bootstrap V(x_{s+1}) at an
        # episode end and at the end of the unroll.
        later = torch.cat([corrections[1:], torch.zeros_like(corrections[:1])], dim=0)
        next_vs = next_values + continues * later
        pg_advantages = torch.clamp(rhos, max=rho_bar_pg) * (rewards + discounts * next_vs - values)
    return VTrace(vs=vs, pg_advantages=pg_advantages, rhos=rhos)
