"""Tests of the gradient-mode ParameterServer (Gorila) and the Learner's gradient API."""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from distdqn.config import LearnerConfig, NetworkConfig
from distdqn.agents.dqn.spec import transition_batch as SampledBatch
from distdqn.core import NonFiniteLossError, flat_params
from distdqn.agents.dqn.networks import make_network
from distdqn.roles.learner import Learner
from distdqn.roles.optim import make_optimizer
from distdqn.roles.parameter_server import ApplyResult, ParameterServer


@dataclass(frozen=True)
class PSCfg:
    """Same shape as distdqn.config.ParameterServerConfig."""

    max_staleness: int = 4
    stale_policy: str = "drop"


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def net(seed: int = 0, dueling: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_network(NetworkConfig(kind="mlp", hidden_sizes=(8, 8), dueling=dueling), (4,), 2)


def lcfg(**kw) -> LearnerConfig:
    base = dict(batch_size=4, learning_rate=1e-2, device="cpu", target_update_period=100)
    base.update(kw)
    return LearnerConfig(**base)


def make_ps(seed: int = 0, cfg: LearnerConfig | None = None, ps_cfg: PSCfg | None = None,
            init_seed: int | None = None) -> ParameterServer:
    """A gradient-mode PS whose network is built from ``seed`` and initialised from ``init_seed``."""
    init = flat_params(net(seed if init_seed is None else init_seed))
    return ParameterServer(init, net(seed), cfg or lcfg(), ps_cfg or PSCfg())


def grads_seq(n: int, p: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p, generator=g) for _ in range(n)]


class Reference:
    """A plain torch.optim optimizer stepping an identical copy of the network."""

    def __init__(self, cfg: LearnerConfig, seed: int = 0):
        self.net = net(seed)
        self.opt = make_optimizer(cfg, self.net.parameters())
        self.cfg = cfg

    def step(self, flat: torch.Tensor) -> None:
        off = 0
        for p in self.net.state_dict(keep_vars=True).values():
            n = p.numel()
            p.grad = flat[off : off + n].reshape(p.shape).clone()
            off += n
        self.opt.step()


def assert_params_equal(a: torch.nn.Module | np.ndarray, b: torch.nn.Module | np.ndarray) -> None:
    fa = a if isinstance(a, np.ndarray) else flat_params(a)
    fb = b if isinstance(b, np.ndarray) else flat_params(b)
    assert torch.equal(torch.from_numpy(fa), torch.from_numpy(fb))


# ----------------------------------------------------------------------------- parameter server


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_gradient_mode_bit_identical_to_torch_optim(optimizer: str) -> None:
    cfg = lcfg(optimizer=optimizer)
    ps = make_ps(cfg=cfg)
    ref = Reference(cfg)
    assert ps.gradient_mode and ps.num_params == flat_params(ref.net).size
    seq = grads_seq(20, ps.num_params)
    for k, g in enumerate(seq):
        res = ps.apply_gradients(g.numpy() if k % 2 else g, based_on_version=ps.version)
        assert res == ApplyResult(applied=True, staleness=0, scale=1.0)
        ref.step(g)
    assert ps.version == 20 and ps.applied_updates == 20 and ps.dropped_stale_gradients == 0
    assert_params_equal(ps.network, ref.net)
    v, p = ps.get_params()
    assert v == 20
    assert_params_equal(p, ref.net)
    assert not np.array_equal(p, flat_params(net(0)))  # it moved
    # the caller's gradient is not modified
    assert torch.equal(seq[0], grads_seq(1, ps.num_params)[0])


def test_ps_initialised_from_initial_not_network() -> None:
    ps = ParameterServer(flat_params(net(3)), net(0), lcfg())
    assert_params_equal(ps.get_params()[1], net(3))
    assert_params_equal(ps.get_target()[1], net(3))


def test_staleness_drop() -> None:
    ps = make_ps(ps_cfg=PSCfg(max_staleness=2, stale_policy="drop"))
    ref = Reference(lcfg())
    based = [0, 0, 0, 0, 1, 4, 1, 2, 3]
    expected_staleness = [0, 1, 2, 3, 2, 0, 4, 3, 2]
    expected_applied = [True, True, True, False, True, True, False, False, True]
    seq = grads_seq(len(based), ps.num_params, seed=1)
    results = []
    for b, g in zip(based, seq):
        r = ps.apply_gradients(g, b)
        results.append(r)
        if r.applied:
            ref.step(g)
    assert [r.applied for r in results] == expected_applied
    assert [r.staleness for r in results] == expected_staleness
    assert [r.scale for r in results] == [1.0 if a else 0.0 for a in expected_applied]
    assert ps.version == ps.applied_updates == 6
    assert ps.dropped_stale_gradients == 3
    assert ps.staleness_counts == {0: 2, 1: 1, 2: 3, 3: 2, 4: 1}
    assert ps.staleness_mean() == pytest.approx(17 / 9)
    assert ps.pop_staleness() == expected_staleness
    assert ps.pop_staleness() == []
    assert_params_equal(ps.network, ref.net)


@pytest.mark.parametrize("max_staleness", [0, 2])
def test_staleness_scale(max_staleness: int) -> None:
    # a large Adam epsilon makes the update roughly linear in the gradient, so scaling matters
    cfg = lcfg(adam_epsilon=1.0)
    ps = make_ps(cfg=cfg, ps_cfg=PSCfg(max_staleness=max_staleness, stale_policy="scale"))
    ref, unscaled = Reference(cfg), Reference(cfg)
    based = [0, 0, 0, 1, 0, 2, 6, 3]
    staleness = [0, 1, 2, 2, 4, 3, 0, 4]
    seq = grads_seq(len(based), ps.num_params, seed=2)
    for b, s, g in zip(based, staleness, seq):
        r = ps.apply_gradients(g, b)
        assert r.applied and r.staleness == s
        if s > max_staleness:
            assert r.scale == 1.0 / s
            ref.step(g / s)
        else:
            assert r.scale == 1.0
            ref.step(g)
        unscaled.step(g)
    assert ps.version == 8 and ps.dropped_stale_gradients == 0
    assert_params_equal(ps.network, ref.net)
    diff = np.abs(flat_params(ps.network) - flat_params(unscaled.net)).max()
    assert diff > 1e-3


def test_target_sync_period_counts_applied_updates_only() -> None:
    ps = make_ps(cfg=lcfg(target_update_period=3), ps_cfg=PSCfg(max_staleness=0))
    init = flat_params(ps.network)
    assert ps.get_target() is not None
    tv, tp = ps.get_target()
    assert tv == 0 and np.array_equal(tp, init)
    assert ps.get_target(newer_than=0) is None
    seq = grads_seq(6, ps.num_params, seed=3)
    assert ps.apply_gradients(seq[0], 0).applied          # applied 1 (v1)
    assert not ps.apply_gradients(seq[1], 0).applied      # dropped (staleness 1)
    assert ps.apply_gradients(seq[2], 1).applied          # applied 2 (v2)
    assert ps.get_target(newer_than=0) is None            # 2 applied < period 3
    assert np.array_equal(ps.get_target()[1], init)
    assert not ps.apply_gradients(seq[3], 0).applied      # dropped: would be the 3rd if counted
    assert ps.get_target(newer_than=0) is None
    assert ps.apply_gradients(seq[4], 2).applied          # applied 3 (v3): sync
    tv, tp = ps.get_target(newer_than=0)
    assert tv == 1 and ps.target_version == 1
    assert np.array_equal(tp, ps.get_params()[1]) and not np.array_equal(tp, init)
    assert ps.get_target(newer_than=1) is None
    tp[:] = 0  # a copy
    assert not np.array_equal(ps.get_target()[1], tp)
    for k in range(3):
        ps.apply_gradients(seq[5] * (k + 1), ps.version)
    assert ps.target_version == 2 and ps.applied_updates == 6
    assert np.array_equal(ps.get_target(newer_than=1)[1], ps.get_params()[1])


def test_target_polyak_every_applied_update() -> None:
    tau = 0.25
    ps = make_ps(cfg=lcfg(tau=tau), ps_cfg=PSCfg(max_staleness=0))
    tgt = [p.detach().clone() for p in ps.network.parameters()]
    seq = grads_seq(4, ps.num_params, seed=4)
    for g in seq:
        ps.apply_gradients(g, ps.version)
        tgt = [torch.lerp(t, o.detach(), tau) for t, o in zip(tgt, ps.network.parameters())]
    assert not ps.apply_gradients(seq[0], 0).applied  # dropped: no target change
    assert ps.target_version == 4
    for t, e in zip(ps.target.parameters(), tgt):
        assert torch.equal(t, e)


def test_errors_leave_state_unchanged() -> None:
    ps = make_ps()
    seq = grads_seq(3, ps.num_params, seed=5)
    ps.apply_gradients(seq[0], 0)
    ps.apply_gradients(seq[1], 1)
    before = flat_params(ps.network)
    opt_before = copy.deepcopy(ps.optimizer.state_dict())
    bad = seq[2].clone()
    bad[7] = float("nan")
    with pytest.raises(NonFiniteLossError, match="version 2"):
        ps.apply_gradients(bad, 2)
    bad[7] = float("inf")
    with pytest.raises(NonFiniteLossError, match="version 2"):
        ps.apply_gradients(bad, 0)
    with pytest.raises(ValueError, match=str(ps.num_params)):
        ps.apply_gradients(torch.zeros(ps.num_params + 1), 2)
    with pytest.raises(ValueError, match="version 2"):
        ps.apply_gradients(seq[2], 3)  # from the future
    with pytest.raises(ValueError):
        ps.apply_gradients(seq[2], -1)
    assert ps.version == 2 and ps.applied_updates == 2 and ps.dropped_stale_gradients == 0
    assert ps.staleness_counts == {0: 2}
    assert np.array_equal(flat_params(ps.network), before)
    after = ps.optimizer.state_dict()
    for k, st in opt_before["state"].items():
        assert int(after["state"][k]["step"]) == int(st["step"]) == 2
        assert torch.equal(after["state"][k]["exp_avg"], st["exp_avg"])


def test_set_params_in_gradient_mode_raises() -> None:
    ps = make_ps()
    with pytest.raises(RuntimeError, match="apply_gradients"):
        ps.set_params(np.zeros(ps.num_params, np.float32))
    assert ps.version == 0


def test_publish_mode_unchanged() -> None:
    ps = ParameterServer(np.arange(3, dtype=np.float32))
    assert not ps.gradient_mode
    assert ps.set_params(np.ones(3, np.float32)) == 1
    v, p = ps.get_params(newer_than=0)
    assert v == 1 and np.array_equal(p, np.ones(3, np.float32))
    with pytest.raises(RuntimeError, match="gradient mode"):
        ps.apply_gradients(np.zeros(3, np.float32), 0)
    with pytest.raises(RuntimeError, match="gradient mode"):
        ps.get_target()
    state = roundtrip(ps.state_dict())
    assert set(state) == {"params", "version"}


def test_invalid_ps_cfg() -> None:
    with pytest.raises(ValueError, match="stale_policy"):
        make_ps(ps_cfg=PSCfg(stale_policy="ignore"))
    with pytest.raises(ValueError, match="max_staleness"):
        make_ps(ps_cfg=PSCfg(max_staleness=-1))
    with pytest.raises(ValueError):
        ParameterServer(np.zeros(3, np.float32), net(0), lcfg())


@pytest.mark.parametrize("policy", ["drop", "scale"])
def test_state_dict_round_trip_bit_identical(policy: str) -> None:
    cfg = lcfg(target_update_period=2)
    a = make_ps(cfg=cfg, ps_cfg=PSCfg(max_staleness=1, stale_policy=policy))
    seq = grads_seq(12, a.num_params, seed=6)
    based = [0, 0, 0, 2, 1, 3]
    for b, g in zip(based, seq[:6]):
        a.apply_gradients(g, b)
    state = roundtrip(a.state_dict())
    for v in state.values():  # only plain types
        assert isinstance(v, (torch.Tensor, int, float, dict))
    b_ = make_ps(cfg=cfg, ps_cfg=PSCfg(max_staleness=1, stale_policy=policy), init_seed=9)
    b_.load_state_dict(state)
    for attr in ("version", "target_version", "applied_updates", "dropped_stale_gradients", "staleness_counts"):
        assert getattr(a, attr) == getattr(b_, attr), attr
    assert b_.pop_staleness() == []
    results = []
    for off, g in zip([0, 1, 2, 0, 3, 1], seq[6:]):
        bo = max(a.version - off, 0)
        ra, rb = a.apply_gradients(g, bo), b_.apply_gradients(g, bo)
        assert ra == rb
        results.append(ra.applied)
    assert results == ([True, True, False, True, False, True] if policy == "drop" else [True] * 6)
    assert_params_equal(a.network, b_.network)
    assert_params_equal(a.target, b_.target)
    assert a.get_params()[0] == b_.get_params()[0]
    assert a.get_target()[0] == b_.get_target()[0]
    assert a.staleness_counts == b_.staleness_counts
    # a publish-mode server (e.g. `distdqn eval`) can read the params of a gradient-mode state
    pub = ParameterServer(np.zeros(a.num_params, np.float32))
    pub.load_state_dict(roundtrip(a.state_dict()))
    assert pub.version == a.version and np.array_equal(pub.get_params()[1], a.get_params()[1])
    with pytest.raises(ValueError, match="publish-mode"):
        b_.load_state_dict(pub.state_dict())


# ----------------------------------------------------------------------------- learner gradient API


def batch(seed: int = 0, b: int = 4, reward=None) -> SampledBatch:
    g = torch.Generator().manual_seed(seed)
    return SampledBatch(
        obs=torch.randn(b, 4, generator=g),
        action=torch.randint(0, 2, (b,), generator=g),
        reward=torch.randn(b, generator=g) * 3 if reward is None else torch.as_tensor(reward, dtype=torch.float32),
        discount=torch.tensor([0.99**3, 0.0, 0.99, 0.99**2])[:b],
        next_obs=torch.randn(b, 4, generator=g),
        weights=torch.tensor([1.0, 0.5, 0.25, 1.0])[:b],
        keys=np.arange(b, dtype=np.int64),
    )


@pytest.mark.parametrize("kw", [
    dict(optimizer="adam", max_grad_norm=0.05, target_update_period=2),  # clipping active
    dict(optimizer="rmsprop", max_grad_norm=None, double_dqn=False, loss="mse", target_update_period=3),
    dict(optimizer="adam", tau=0.3),
])
def test_compute_then_apply_equals_learn(kw) -> None:
    a = Learner(lcfg(**kw), net(0), torch.device("cpu"))
    b_ = Learner(lcfg(**kw), net(0), torch.device("cpu"))
    for k in range(5):
        oa = a.learn(batch(k))
        ob = b_.compute_gradients(batch(k))
        assert ob.grads is not None and ob.grads.shape == (b_.get_params().size,)
        assert ob.grads.dtype == torch.float32 and ob.grads.device.type == "cpu"
        np.testing.assert_array_equal(oa.td_abs, ob.td_abs)
        assert oa.metrics == ob.metrics and oa.grads is None
        b_.apply_gradients(ob.grads)
        assert a.updates == b_.updates == k + 1
        np.testing.assert_array_equal(a.get_params(), b_.get_params())
        np.testing.assert_array_equal(a.get_target_params(), b_.get_target_params())
    if kw.get("max_grad_norm"):
        assert oa.metrics["grad_norm"] > kw["max_grad_norm"]  # the clip really did something
        assert float(ob.grads.norm()) == pytest.approx(kw["max_grad_norm"], rel=1e-4)
    assert not np.array_equal(a.get_params(), flat_params(net(0)))


def test_compute_gradients_changes_nothing() -> None:
    learner = Learner(lcfg(max_grad_norm=None), net(0), torch.device("cpu"))
    p0, t0 = learner.get_params(), learner.get_target_params()
    out = learner.compute_gradients(batch(0))
    out2 = learner.compute_gradients(batch(0))
    assert torch.equal(out.grads, out2.grads)
    assert learner.updates == 0 and learner.optimizer.state_dict()["state"] == {}
    np.testing.assert_array_equal(learner.get_params(), p0)
    np.testing.assert_array_equal(learner.get_target_params(), t0)
    assert all(not p.grad.any() for p in learner.online.parameters())
    # the flat gradient is the autograd gradient in state_dict order
    ref = net(0)
    bt = batch(0)
    with torch.no_grad():
        qn = ref(bt.next_obs)
        y = bt.reward + bt.discount * qn.gather(1, ref(bt.next_obs).argmax(1, keepdim=True)).squeeze(1)
    q_sa = ref(bt.obs).gather(1, bt.action[:, None]).squeeze(1)
    loss = (torch.nn.functional.huber_loss(q_sa, y, reduction="none") * bt.weights).mean()
    loss.backward()
    expected = torch.cat([p.grad.reshape(-1) for p in ref.state_dict(keep_vars=True).values()])
    torch.testing.assert_close(out.grads, expected, rtol=1e-5, atol=1e-7)


def test_learner_gradient_errors_and_param_setters() -> None:
    learner = Learner(lcfg(), net(0), torch.device("cpu"))
    p0 = learner.get_params()
    with pytest.raises(NonFiniteLossError, match="update 1"):
        learner.compute_gradients(batch(reward=[1.0, float("nan"), 0.0, 0.0]))
    g = learner.compute_gradients(batch(1)).grads
    with pytest.raises(ValueError):
        learner.apply_gradients(g[:-1])
    bad = g.clone()
    bad[0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="update 1"):
        learner.apply_gradients(bad)
    assert learner.updates == 0
    np.testing.assert_array_equal(learner.get_params(), p0)
    other, other_t = flat_params(net(5)), flat_params(net(6))
    learner.set_params(other)
    learner.set_target_params(torch.from_numpy(other_t))
    np.testing.assert_array_equal(learner.get_params(), other)
    np.testing.assert_array_equal(learner.get_target_params(), other_t)
    with pytest.raises(ValueError):
        learner.set_params(other[:-1])


def test_gorila_loop_learner_and_ps() -> None:
    """A learner pulling from the PS and sending gradients reproduces a single learner exactly
    when nothing is stale and the target period matches."""
    cfg = lcfg(target_update_period=2)
    ps = ParameterServer(flat_params(net(0)), net(0), cfg, PSCfg(max_staleness=0))
    worker = Learner(cfg, net(7), torch.device("cpu"))
    single = Learner(cfg, net(0), torch.device("cpu"))
    tv = -1
    for k in range(6):
        v, p = ps.get_params()
        worker.set_params(p)
        got = ps.get_target(newer_than=tv)
        if got is not None:
            tv, tp = got
            worker.set_target_params(tp)
        out = worker.compute_gradients(batch(k))
        assert ps.apply_gradients(out.grads, v).applied
        single.learn(batch(k))
    assert worker.updates == 0
    np.testing.assert_array_equal(ps.get_params()[1], single.get_params())
    np.testing.assert_array_equal(ps.get_target()[1], single.get_target_params())
