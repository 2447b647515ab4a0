"""Tests of distdqn.losses against hand-computed values (B=3, A=2)."""

from __future__ import annotations

import pytest
import torch

from distdqn.agents.dqn.loss import n_step_double_dqn_targets, td_loss

REWARD = torch.tensor([1.0, 2.0, -1.0])
DISCOUNT = torch.tensor([0.9, 0.0, 0.81])
# online argmax: [1, 0, 0]
Q_NEXT_ONLINE = torch.tensor([[1.0, 3.0], [5.0, 2.0], [0.5, -0.5]])
# target values: at the online argmax [10, 30, 7]; row max [20, 40, 8]
Q_NEXT_TARGET = torch.tensor([[20.0, 10.0], [30.0, 40.0], [7.0, 8.0]])


def test_double_dqn_targets_hand_values() -> None:
    y = n_step_double_dqn_targets(REWARD, DISCOUNT, Q_NEXT_ONLINE, Q_NEXT_TARGET, double_dqn=True)
    # y0 = 1 + 0.9*10 (online picks a=1, target gives 10, not its own max 20)
    # y1 = 2 + 0 * 30 (terminated: y = R)
    # y2 = -1 + 0.81*7
    assert y.shape == (3,) and y.dtype == torch.float32
    torch.testing.assert_close(y, torch.tensor([10.0, 2.0, 4.67]))


def test_terminated_gives_reward_only_even_with_huge_values() -> None:
    q_big = torch.full((3, 2), 1e6)
    y = n_step_double_dqn_targets(REWARD, torch.zeros(3), q_big, q_big)
    torch.testing.assert_close(y, REWARD)


def test_no_double_uses_target_max() -> None:
    y = n_step_double_dqn_targets(REWARD, DISCOUNT, Q_NEXT_ONLINE, Q_NEXT_TARGET, double_dqn=False)
    # y0 = 1 + 0.9*20, y1 = 2, y2 = -1 + 0.81*8
    torch.testing.assert_close(y, torch.tensor([19.0, 2.0, 5.48]))
    # the online values are ignored entirely
    y2 = n_step_double_dqn_targets(REWARD, DISCOUNT, -Q_NEXT_ONLINE, Q_NEXT_TARGET, double_dqn=False)
    torch.testing.assert_close(y2, y)


def test_targets_are_detached_and_inputs_untouched() -> None:
    qo = Q_NEXT_ONLINE.clone().requires_grad_(True)
    qt = Q_NEXT_TARGET.clone().requires_grad_(True)
    r, d = REWARD.clone(), DISCOUNT.clone()
    y = n_step_double_dqn_targets(r, d, qo, qt)
    assert not y.requires_grad
    torch.testing.assert_close(r, REWARD, rtol=0, atol=0)
    torch.testing.assert_close(d, DISCOUNT, rtol=0, atol=0)
    torch.testing.assert_close(qo.detach(), Q_NEXT_ONLINE, rtol=0, atol=0)
    torch.testing.assert_close(qt.detach(), Q_NEXT_TARGET, rtol=0, atol=0)


# td_loss fixtures: q_sa = [2.0, 0.5, 0.0]; td = y - q_sa = [0.5, 0.3, -2.0]
Q = torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]])
ACTION = torch.tensor([1, 0, 1])
TARGET = torch.tensor([2.5, 0.8, -2.0])
W = torch.tensor([1.0, 2.0, 0.5])


def test_td_loss_huber_hand_value() -> None:
    loss, td_abs = td_loss(Q.clone().requires_grad_(True), ACTION, TARGET, kind="huber")
    # huber(0.5)=0.125, huber(0.3)=0.045, huber(2.0)=2-0.5=1.5 -> mean 1.67/3
    assert float(loss.detach()) == pytest.approx(1.67 / 3, rel=1e-6)
    torch.testing.assert_close(td_abs, torch.tensor([0.5, 0.3, 2.0]))
    assert not td_abs.requires_grad


def test_td_loss_mse_hand_value() -> None:
    loss, td_abs = td_loss(Q.clone().requires_grad_(True), ACTION, TARGET, kind="mse")
    # 0.5*x^2: 0.125, 0.045, 2.0 -> mean 2.17/3
    assert float(loss.detach()) == pytest.approx(2.17 / 3, rel=1e-6)
    torch.testing.assert_close(td_abs, torch.tensor([0.5, 0.3, 2.0]))


@pytest.mark.parametrize("kind,expected", [("huber", (0.125 + 0.09 + 0.75) / 3), ("mse", (0.125 + 0.09 + 1.0) / 3)])
def test_importance_weights_scale_per_sample_losses(kind: str, expected: float) -> None:
    loss, td_abs = td_loss(Q.clone().requires_grad_(True), ACTION, TARGET, W, kind=kind)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    # td_abs is not weighted
    torch.testing.assert_close(td_abs, torch.tensor([0.5, 0.3, 2.0]))
    ones, _ = td_loss(Q.clone(), ACTION, TARGET, torch.ones(3), kind=kind)
    none, _ = td_loss(Q.clone(), ACTION, TARGET, None, kind=kind)
    assert float(ones.detach()) == pytest.approx(float(none.detach()), rel=1e-7)


def test_td_abs_equals_abs_target_minus_q_sa() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, generator=g)
    a = torch.tensor([0, 1, 1])
    y = torch.randn(3, generator=g)
    _, td_abs = td_loss(q, a, y)
    expected = (y - q[torch.arange(3), a]).abs()
    torch.testing.assert_close(td_abs, expected)


def test_gradient_flows_only_into_q_at_taken_actions() -> None:
    q = Q.clone().requires_grad_(True)
    qo = Q_NEXT_ONLINE.clone().requires_grad_(True)
    qt = Q_NEXT_TARGET.clone().requires_grad_(True)
    # target from grad-carrying next-state values: no gradient may reach them
    y = n_step_double_dqn_targets(torch.tensor([2.5, 0.8, -2.0]), torch.zeros(3), qo, qt)
    loss, _ = td_loss(q, ACTION, y, W, kind="huber")
    loss.backward()
    assert qo.grad is None and qt.grad is None
    # d/dq_sa of w * huber(q_sa - y) / B = w * clip(q_sa - y, -1, 1) / 3; q_sa - y = [-0.5, -0.3, 2.0]
    expected = torch.tensor([[0.0, -0.5 * 1.0 / 3], [-0.3 * 2.0 / 3, 0.0], [0.0, 1.0 * 0.5 / 3]])
    torch.testing.assert_close(q.grad, expected)


def test_mse_gradient_hand_value() -> None:
    q = Q.clone().requires_grad_(True)
    loss, _ = td_loss(q, ACTION, TARGET, kind="mse")
    loss.backward()
    # d/dq_sa 0.5 (y - q_sa)^2 / 3 = (q_sa - y)/3
    expected = torch.tensor([[0.0, -0.5 / 3], [-0.3 / 3, 0.0], [0.0, 2.0 / 3]])
    torch.testing.assert_close(q.grad, expected)


def test_td_loss_does_not_mutate_inputs() -> None:
    q, a, y, w = Q.clone().requires_grad_(True), ACTION.clone(), TARGET.clone(), W.clone()
    loss, _ = td_loss(q, a, y, w)
    loss.backward()
    torch.testing.assert_close(q.detach(), Q, rtol=0, atol=0)
    assert torch.equal(a, ACTION) and torch.equal(y, TARGET) and torch.equal(w, W)


def test_unknown_loss_kind() -> None:
    with pytest.raises(ValueError, match="l1"):
        td_loss(Q, ACTION, TARGET, kind="l1")  # type: ignore[arg-type]
