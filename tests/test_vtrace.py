"""V-trace against a brute-force double loop over IMPALA's eq. 1, and its on-policy case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distdqn.agents.actor_critic.vtrace import vtrace


def _inputs(t: int, b: int, seed: int, cut: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    terminated = rng.random((t, b)) < (0.1 if cut else 0.0)
    truncated = (rng.random((t, b)) < (0.1 if cut else 0.0)) & ~terminated
    gamma = rng.uniform(0.9, 1.0, size=(t, b))  # per-step discounts
    values = rng.standard_normal((t, b))
    next_values = np.concatenate([values[1:], rng.standard_normal((1, b))])
    final = rng.standard_normal((t, b))  # the value of an ended episode's final observation
    ended = terminated | truncated
    next_values = np.where(ended, final, next_values)
    return {"log_rhos": rng.uniform(-2.5, 2.5, size=(t, b)), "discounts": np.where(terminated, 0.0, gamma),
            "rewards": rng.standard_normal((t, b)), "values": values, "next_values": next_values,
            "continues": (~ended).astype(np.float64)}


def _brute_force(x: dict[str, np.ndarray], rho_bar: float, c_bar: float, rho_bar_pg: float):
    """Eq. 1 summed term by term: v_s = V(x_s) + sum_t (prod_{i<t} gamma_i c_i cont_i) delta_t."""
    t_len, b = x["values"].shape
    rho = np.exp(x["log_rhos"])
    vs = np.zeros((t_len, b))
    for j in range(b):
        for s in range(t_len):
            total, weight = x["values"][s, j], 1.0
            for t in range(s, t_len):
                delta = min(rho_bar, rho[t, j]) * (x["rewards"][t, j] + x["discounts"][t, j] * x["next_values"][t, j]
                                                   - x["values"][t, j])
                total += weight * delta
                weight *= x["discounts"][t, j] * min(c_bar, rho[t, j]) * x["continues"][t, j]
            vs[s, j] = total
    adv = np.zeros((t_len, b))
    for j in range(b):
        for s in range(t_len):
            inside = s + 1 < t_len and x["continues"][s, j] > 0
            v_next = vs[s + 1, j] if inside else x["next_values"][s, j]
            adv[s, j] = min(rho_bar_pg, rho[s, j]) * (x["rewards"][s, j] + x["discounts"][s, j] * v_next
                                                      - x["values"][s, j])
    return vs, adv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vtrace_equals_the_brute_force_sum(seed):
    x = _inputs(t=7, b=5, seed=seed)
    out = vtrace(**{k: torch.tensor(v) for k, v in x.items()}, rho_bar=3.7, c_bar=1.0, rho_bar_pg=2.2)
    vs, adv = _brute_force(x, 3.7, 1.0, 2.2)
    np.testing.assert_allclose(out.vs.numpy(), vs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.pg_advantages.numpy(), adv, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.rhos.numpy(), np.exp(x["log_rhos"]))


def test_on_policy_vtrace_is_the_n_step_bootstrapped_return():
    """pi = mu (log rho = 0), no episode end: v_s = sum_{t>=s} gamma^{t-s} r_t + gamma^{T-s} V(x_T)."""
    x = _inputs(t=6, b=3, seed=4, cut=False)
    x["log_rhos"] = np.zeros_like(x["log_rhos"])
    x["discounts"] = np.full_like(x["discounts"], 0.95)
    out = vtrace(**{k: torch.tensor(v) for k, v in x.items()})
    t_len = 6
    bootstrap = x["next_values"][-1]
    for s in range(t_len):
        want = sum(0.95 ** (t - s) * x["rewards"][t] for t in range(s, t_len)) + 0.95 ** (t_len - s) * bootstrap
        np.testing.assert_allclose(out.vs.numpy()[s], want, rtol=1e-10)


def test_vtrace_refuses_mismatched_shapes():
    x = {k: torch.tensor(v) for k, v in _inputs(4, 2, 0).items()}
    x["rewards"] = x["rewards"][:3]
    with pytest.raises(ValueError, match="rewards has shape"):
        vtrace(**x)
