"""Tests of distdqn.exploration."""

from __future__ import annotations

import numpy as np
import pytest

from distdqn.agents.dqn.agent import apex_epsilons, linear_epsilon


def test_apex_epsilons_eight_actors() -> None:
    eps = apex_epsilons(8)
    assert eps.shape == (8,) and eps.dtype == np.float64
    # eps_i = 0.4^(1 + 7 i / 7) = 0.4^(i + 1)
    np.testing.assert_allclose(eps, [0.4 ** (i + 1) for i in range(8)], rtol=1e-12)
    assert eps[0] == pytest.approx(0.4)
    assert eps[7] == pytest.approx(0.4**8)  # 6.5536e-4
    assert eps[7] == pytest.approx(6.5536e-4)
    assert np.all(np.diff(eps) < 0)


def test_apex_epsilons_custom_base_alpha() -> None:
    eps = apex_epsilons(3, base=0.5, alpha=2.0)
    # 0.5^(1 + 2*i/2) = 0.5^(1+i)
    np.testing.assert_allclose(eps, [0.5, 0.25, 0.125])
    np.testing.assert_allclose(apex_epsilons(5, alpha=0.0), [0.4] * 5)


def test_apex_epsilons_single_actor() -> None:
    eps = apex_epsilons(1)
    assert eps.shape == (1,) and eps[0] == pytest.approx(0.4)
    assert apex_epsilons(1, base=0.1)[0] == pytest.approx(0.1)


def test_apex_epsilons_rejects_zero() -> None:
    with pytest.raises(ValueError):
        apex_epsilons(0)


@pytest.mark.parametrize(
    "step,expected",
    [(0, 1.0), (50, 0.55), (25, 0.775), (100, 0.1), (1000, 0.1), (-5, 1.0)],
)
def test_linear_epsilon(step: int, expected: float) -> None:
    assert linear_epsilon(step, 1.0, 0.1, 100) == pytest.approx(expected)


def test_linear_epsilon_increasing_schedule() -> None:
    assert linear_epsilon(10, 0.0, 1.0, 40) == pytest.approx(0.25)
