"""Tests of the roles: ParameterServer, Learner, Actor, Evaluator."""

from __future__ import annotations

import copy
import io

import gymnasium
import numpy as np
import pytest
import torch

from _util import flush

from distdqn.agents.dqn.agent import initial_priorities
from distdqn.testing import envs as testing_envs
from distdqn.config import ExperimentConfig, LearnerConfig, NetworkConfig, replace
from distdqn.agents.dqn.spec import transition_batch as SampledBatch
from distdqn.core import NonFiniteLossError, flat_params
from distdqn.agents.dqn.agent import linear_epsilon
from distdqn.agents.dqn.loss import n_step_double_dqn_targets
from distdqn.agents.dqn.networks import make_network
from distdqn.program import build_actor, build_evaluator, build_network, spaces_for
from distdqn.roles import env_runner as actor_module
from distdqn.roles.evaluator import Evaluator
from distdqn.roles.learner import Learner
from distdqn.roles.optim import FlatOptimizer, make_optimizer
from distdqn.roles.parameter_server import ParameterServer


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ----------------------------------------------------------------------------- parameter server


def test_parameter_server_versioning() -> None:
    init = np.arange(5, dtype=np.float32)
    ps = ParameterServer(init)
    assert ps.num_params == 5 and ps.version == 0
    v, p = ps.get_params()
    assert v == 0 and np.array_equal(p, init)
    assert ps.get_params(newer_than=0) is None
    assert ps.set_params(init * 2) == 1
    assert ps.get_params(newer_than=1) is None
    assert ps.get_params(newer_than=5) is None
    v, p = ps.get_params(newer_than=0)
    assert v == 1 and np.array_equal(p, init * 2)
    p[:] = -1  # a copy: the server is unaffected
    assert np.array_equal(ps.get_params()[1], init * 2)
    init[:] = 99  # the constructor copied too
    assert np.array_equal(ps.get_params()[1], np.arange(5, dtype=np.float32) * 2)


def test_parameter_server_wrong_length_and_state() -> None:
    ps = ParameterServer(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="5"):
        ps.set_params(np.zeros(5, np.float32))
    assert ps.version == 0
    ps.set_params(np.ones(4, np.float32))
    ps2 = ParameterServer(np.zeros(4, np.float32))
    ps2.load_state_dict(roundtrip(ps.state_dict()))
    assert ps2.version == 1 and np.array_equal(ps2.get_params()[1], np.ones(4, np.float32))


# ----------------------------------------------------------------------------- learner


def tiny_net(seed: int = 0, dueling: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_network(NetworkConfig(kind="mlp", hidden_sizes=(8,), dueling=dueling), (4,), 2)


def lcfg(**kw) -> LearnerConfig:
    base = dict(batch_size=4, learning_rate=1e-2, device="cpu", target_update_period=100)
    base.update(kw)
    return LearnerConfig(**base)


def batch(seed: int = 0, b: int = 4, reward=None) -> SampledBatch:
    g = torch.Generator().manual_seed(seed)
    return SampledBatch(
        obs=torch.randn(b, 4, generator=g),
        action=torch.randint(0, 2, (b,), generator=g),
        reward=torch.randn(b, generator=g) if reward is None else torch.as_tensor(reward, dtype=torch.float32),
        discount=torch.tensor([0.99**3, 0.0, 0.99, 0.99**2])[:b],
        next_obs=torch.randn(b, 4, generator=g),
        weights=torch.tensor([1.0, 0.5, 0.25, 1.0])[:b],
        keys=np.arange(b, dtype=np.int64),
    )


def params(m: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def test_learn_changes_params_and_returns_td_abs() -> None:
    learner = Learner(lcfg(), tiny_net(), torch.device("cpu"))
    bt = batch()
    before = params(learner.online)
    with torch.no_grad():
        q = learner.online(bt.obs)
        y = n_step_double_dqn_targets(bt.reward, bt.discount, learner.online(bt.next_obs), learner.target(bt.next_obs))
        expected_td = (y - q[torch.arange(4), bt.action]).abs()
    out = learner.learn(bt)
    assert out.td_abs.shape == (4,) and out.td_abs.dtype == np.float32
    np.testing.assert_allclose(out.td_abs, expected_td.numpy(), rtol=1e-5, atol=1e-6)
    assert set(out.metrics) >= {"td_loss", "q_mean", "grad_norm"}
    assert out.metrics["q_mean"] == pytest.approx(float(q.mean()), rel=1e-5)
    # weighted huber loss by hand
    d = expected_td
    hub = torch.where(d <= 1, 0.5 * d**2, d - 0.5)
    assert out.metrics["td_loss"] == pytest.approx(float((hub * bt.weights).mean()), rel=1e-5)
    assert learner.updates == 1
    after = params(learner.online)
    assert any(not torch.equal(a, b_) for a, b_ in zip(before, after))
    # target untouched (period 100)
    for t, p0 in zip(learner.target.parameters(), before):
        assert torch.equal(t, p0)
    assert np.array_equal(learner.get_params(), flat_params(learner.online))


def test_hard_target_update_period() -> None:
    learner = Learner(lcfg(target_update_period=1), tiny_net(), torch.device("cpu"))
    learner.learn(batch())
    for t, o in zip(learner.target.parameters(), learner.online.parameters()):
        assert torch.equal(t, o)
    assert not learner.target.parameters().__next__().requires_grad

    learner2 = Learner(lcfg(target_update_period=2), tiny_net(), torch.device("cpu"))
    init = params(learner2.online)
    learner2.learn(batch(0))
    for t, p0 in zip(learner2.target.parameters(), init):
        assert torch.equal(t, p0)
    learner2.learn(batch(1))
    for t, o in zip(learner2.target.parameters(), learner2.online.parameters()):
        assert torch.equal(t, o)


def test_polyak_tau_half() -> None:
    learner = Learner(lcfg(tau=0.5), tiny_net(), torch.device("cpu"))
    p0 = params(learner.online)
    learner.learn(batch())
    p1 = params(learner.online)
    for t, a, b_ in zip(learner.target.parameters(), p0, p1):
        assert not torch.equal(a, b_) or a.numel() == 0
        torch.testing.assert_close(t.detach(), (a + b_) / 2, rtol=1e-6, atol=1e-7)
        assert torch.equal(t.detach(), torch.lerp(a, b_, 0.5))


def test_polyak_two_steps() -> None:
    tau = 0.25
    learner = Learner(lcfg(tau=tau), tiny_net(), torch.device("cpu"))
    tgt = params(learner.online)
    for k in range(2):
        learner.learn(batch(k))
        tgt = [(1 - tau) * t + tau * o for t, o in zip(tgt, params(learner.online))]
    for t, e in zip(learner.target.parameters(), tgt):
        torch.testing.assert_close(t.detach(), e, rtol=1e-5, atol=1e-6)


def test_no_double_dqn_and_rmsprop_and_no_clip() -> None:
    learner = Learner(lcfg(double_dqn=False, optimizer="rmsprop", max_grad_norm=None, loss="mse"), tiny_net(),
                      torch.device("cpu"))
    bt = batch()
    with torch.no_grad():
        q = learner.online(bt.obs)
        y = bt.reward + bt.discount * learner.target(bt.next_obs).max(1).values
    out = learner.learn(bt)
    np.testing.assert_allclose(out.td_abs, (y - q[torch.arange(4), bt.action]).abs().numpy(), rtol=1e-5, atol=1e-6)
    assert np.isfinite(out.metrics["grad_norm"]) and out.metrics["grad_norm"] > 0


def test_nan_reward_raises_and_leaves_params_unchanged() -> None:
    learner = Learner(lcfg(), tiny_net(), torch.device("cpu"))
    before = params(learner.online)
    target_before = params(learner.target)
    bad = batch(reward=[1.0, float("nan"), 0.0, 0.0])
    with pytest.raises(NonFiniteLossError, match="update 1"):
        learner.learn(bad)
    assert learner.updates == 0
    for a, b_ in zip(before, params(learner.online)):
        assert torch.equal(a, b_)
    for a, b_ in zip(target_before, params(learner.target)):
        assert torch.equal(a, b_)
    # a good step afterwards is exactly what a fresh learner does (optimizer state untouched)
    fresh = Learner(lcfg(), tiny_net(), torch.device("cpu"))
    out_a, out_b = learner.learn(batch(3)), fresh.learn(batch(3))
    np.testing.assert_array_equal(out_a.td_abs, out_b.td_abs)
    for a, b_ in zip(learner.online.parameters(), fresh.online.parameters()):
        assert torch.equal(a, b_)
    with pytest.raises(NonFiniteLossError, match="update 2"):
        learner.learn(bad)


def test_learner_state_dict_round_trip_bit_identical() -> None:
    a = Learner(lcfg(), tiny_net(0, dueling=True), torch.device("cpu"))
    for k in range(3):
        a.learn(batch(k))
    state = roundtrip(a.state_dict())
    b_ = Learner(lcfg(), tiny_net(1, dueling=True), torch.device("cpu"))
    b_.load_state_dict(state)
    assert b_.updates == 3
    for k in range(3, 5):
        oa, ob = a.learn(batch(k)), b_.learn(batch(k))
        np.testing.assert_array_equal(oa.td_abs, ob.td_abs)
        assert oa.metrics == ob.metrics
    np.testing.assert_array_equal(a.get_params(), b_.get_params())
    np.testing.assert_array_equal(flat_params(a.target), flat_params(b_.target))


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_flat_optimizer_matches_torch_optim_and_round_trips(optimizer: str) -> None:
    """FlatOptimizer = make_optimizer's torch.optim optimizer, bit for bit, on the same flat
    parameter; its state_dict round-trips through torch.save and is refused by the other kind."""
    cfg = lcfg(optimizer=optimizer)
    rng = torch.Generator().manual_seed(4)
    start = torch.randn(50, generator=rng)
    grads = [torch.randn(50, generator=rng) for _ in range(6)]
    ref, flat = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ref_opt, opt = make_optimizer(cfg, [ref]), FlatOptimizer(cfg, flat)
    assert opt.state_dict()["state"] == {}
    for g in grads[:3]:
        ref.grad, flat.grad = g.clone(), g.clone()
        ref_opt.step()
        opt.step()
    assert torch.equal(ref, flat)
    other = torch.nn.Parameter(torch.zeros(50))
    resumed = FlatOptimizer(cfg, other)
    resumed.load_state_dict(roundtrip(opt.state_dict()))
    with torch.no_grad():
        other.copy_(flat)
    for g in grads[3:]:
        ref.grad, flat.grad, other.grad = g.clone(), g.clone(), g.clone()
        ref_opt.step()
        opt.step()
        resumed.step()
    assert torch.equal(ref, flat) and torch.equal(ref, other)
    assert set(opt.state_dict()["state"][0]) == set(ref_opt.state_dict()["state"][0])
    wrong = FlatOptimizer(lcfg(optimizer="rmsprop" if optimizer == "adam" else "adam"), torch.nn.Parameter(torch.zeros(50)))
    with pytest.raises(ValueError, match="learner.optimizer"):
        wrong.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="shape"):
        FlatOptimizer(cfg, torch.nn.Parameter(torch.zeros(49))).load_state_dict(opt.state_dict())


def test_learner_start_does_not_import_dynamo() -> None:
    """torch.optim.Optimizer's first use imports torch._dynamo (seconds of start-up on 2
    cores); building a learner and taking a step must not."""
    import subprocess
    import sys

    code = ("import sys, torch, numpy as np\n"
            "from distdqn.config import ExperimentConfig\n"
            "from distdqn.agents.dqn.networks import make_network\n"
            "from distdqn.roles.learner import Learner\n"
            "from distdqn.agents.dqn.spec import transition_batch as SampledBatch\n"
            "c = ExperimentConfig()\n"
            "L = Learner(c.learner, make_network(c.network, (4,), 2), torch.device('cpu'))\n"
            "b = SampledBatch(obs=torch.randn(8, 4), action=torch.zeros(8, dtype=torch.int64), reward=torch.ones(8),\n"
            "                 discount=torch.ones(8), next_obs=torch.randn(8, 4), weights=torch.ones(8), keys=np.arange(8))\n"
            "L.learn(b); L.load_state_dict(L.state_dict())\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_learner_parameters_are_views_of_one_buffer() -> None:
    learner = Learner(lcfg(), tiny_net(0), torch.device("cpu"))
    flat = learner.get_params()
    learner.learn(batch(0))
    # every online parameter moved, and the published vector is the module's state_dict layout
    assert all(not torch.equal(a, b_) for a, b_ in zip(params(tiny_net(0)), params(learner.online)))
    np.testing.assert_array_equal(learner.get_params(), flat_params(learner.online))
    assert not np.array_equal(learner.get_params(), flat)
    out = learner.get_params()
    out[:] = 0  # a copy
    assert learner.get_params().any()


# ----------------------------------------------------------------------------- actor


def actor_cfg(**changes) -> ExperimentConfig:
    base = {"actor.chunk_size": 16, "env.envs_per_actor": 2, "learner.device": "cpu"}
    base.update(changes)
    return replace(ExperimentConfig(), **base)


def run_actor(actor, steps: int) -> list:
    chunks = []
    for _ in range(steps):
        c = actor.step()
        if c is not None:
            chunks.append(c)
    return chunks


def test_actor_chunks() -> None:
    cfg = actor_cfg()
    spaces = spaces_for(cfg)
    actor = build_actor(cfg, spaces, 0)
    g = cfg.learner.gamma
    try:
        chunks = run_actor(actor, 60)
        last = flush(actor)
        if last is not None:
            chunks.append(last)
    finally:
        actor.close()
    assert len(chunks) >= 5
    total = 0
    for c in chunks:
        t = len(c)
        total += t
        assert t >= 1
        assert c.obs.shape == (t, 4) and c.obs.dtype == np.float32
        assert c.next_obs.shape == (t, 4) and c.next_obs.dtype == np.float32
        assert c.action.dtype == np.int64 and set(np.unique(c.action)) <= {0, 1}
        assert c.reward.dtype == np.float32 and c.discount.dtype == np.float32
        powers = np.array([g, g**2, g**3], dtype=np.float32)
        for r, d in zip(c.reward, c.discount):
            if d == 0:
                # terminated inside the window: R = 1 + g + ... (m <= 3 CartPole rewards of 1)
                assert any(np.isclose(r, sum(g**k for k in range(m)), rtol=1e-6) for m in (1, 2, 3))
            else:
                m = int(np.argmin(np.abs(powers - d))) + 1
                assert d == pytest.approx(g**m, rel=1e-6)
                assert r == pytest.approx(sum(g**k for k in range(m)), rel=1e-6)
        assert c.priority is not None and c.priority.shape == (t,) and c.priority.dtype == np.float32
        assert np.all(np.isfinite(c.priority)) and np.all(c.priority >= 0)
        # priorities are |R + d * max_a Q(s', a) - Q(s, a)| with the actor's own network
        with torch.no_grad():
            q = actor.net(torch.from_numpy(c.obs))
            qn = actor.net(torch.from_numpy(c.next_obs))
        exp = np.abs(c.reward + c.discount * qn.max(1).values.numpy() - q.numpy()[np.arange(t), c.action])
        np.testing.assert_allclose(c.priority, exp, rtol=1e-5, atol=1e-6)
        assert c.actor_id == 0 and c.param_version == -1
    assert sum(c.env_steps for c in chunks) == actor.env_steps == 2 * 60 == 2 * actor.steps
    # transitions pending in the accumulator are not yet in any chunk
    assert total <= actor.env_steps
    assert all(len(c) >= 16 for c in chunks[:-1])
    lengths = [l for c in chunks for l in c.episode_lengths]
    returns = [r for c in chunks for r in c.episode_returns]
    assert len(lengths) >= 2 and lengths == [int(r) for r in returns]  # CartPole: return == length


def test_actor_epsilons() -> None:
    cfg = actor_cfg(**{"actor.epsilon_schedule": "apex", "actor.num_actors": 2})
    spaces = spaces_for(cfg)
    a1 = build_actor(cfg, spaces, 1)
    try:
        # 4 sub-envs in total; actor 1 holds i = 2, 3: 0.4^(1 + 7*2/3), 0.4^8
        np.testing.assert_allclose(a1.epsilons(), [0.4 ** (1 + 14 / 3), 0.4**8])
    finally:
        a1.close()
    cfg = actor_cfg(**{"actor.num_actors": 3, "actor.epsilon_decay_steps": 100, "actor.epsilon_end": 0.1})
    a = build_actor(cfg, spaces, 0)
    try:
        np.testing.assert_allclose(a.epsilons(), [1.0, 1.0])
        run_actor(a, 5)  # 10 env steps of this actor, ~30 of all 3 actors
        np.testing.assert_allclose(a.epsilons(), [linear_epsilon(30, 1.0, 0.1, 100)] * 2)
        assert a.epsilons()[0] == pytest.approx(0.73)
    finally:
        a.close()


def test_actor_param_sync() -> None:
    cfg = actor_cfg(**{"actor.param_sync_period": 3})
    spaces = spaces_for(cfg)
    a = build_actor(cfg, spaces, 0)
    try:
        assert a.wants_params()
        other = build_network(cfg, spaces, seed_path=(99,))
        a.set_params(7, flat_params(other))
        assert a.param_version == 7 and not a.wants_params()
        np.testing.assert_array_equal(flat_params(a.net), flat_params(other))
        run_actor(a, 2)
        assert not a.wants_params()
        run_actor(a, 1)
        assert a.wants_params()
        a.mark_synced()
        assert not a.wants_params()
    finally:
        a.close()


@pytest.fixture
def crash_armed():
    testing_envs.reset_crash_state()
    yield
    testing_envs.reset_crash_state()


def test_actor_survives_env_crash(crash_armed) -> None:
    cfg = actor_cfg(**{"env.id": "distdqn/Crashing-v0"})
    spaces = spaces_for(cfg)
    actor = build_actor(cfg, spaces, 0)
    try:
        chunks = run_actor(actor, 80)  # 2 envs: the 100th env step (vector step 50) crashes
        last = flush(actor)
    finally:
        actor.close()
    if last is not None:
        chunks.append(last)
    assert testing_envs.crash_state()[1] is True
    assert actor.env_restarts == 1
    assert actor.steps == 79 and actor.env_steps == 158
    assert sum(c.env_restarts for c in chunks) == 1
    assert sum(c.env_steps for c in chunks) == 158
    assert sum(len(c) for c in chunks) > 100  # it kept producing after the crash
    for c in chunks:
        assert np.all(np.isfinite(c.obs)) and np.all(np.isfinite(c.reward))


def _chunks_equal(x, y) -> None:
    assert len(x) == len(y)
    for a, b_ in zip(x, y):
        for f in ("obs", "action", "reward", "discount", "next_obs", "priority"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b_, f), err_msg=f)
        assert a.episode_returns == b_.episode_returns and a.episode_lengths == b_.episode_lengths
        assert a.env_steps == b_.env_steps and a.param_version == b_.param_version


@pytest.mark.parametrize("generation,reseed", [(0, None), (1, None), (0, 5)])
def test_actor_state_dict_restore_identical_chunks(generation: int, reseed: int | None, monkeypatch) -> None:
    """Restored mid-episode, the actor continues exactly; the replayed actions span several
    episodes (unseeded resets in between), or with ``reseed`` a recent seeded reset."""
    if reseed is not None:
        monkeypatch.setattr(actor_module, "RESEED_STEPS", reseed)
    cfg = actor_cfg(**{"actor.epsilon_start": 0.5, "actor.epsilon_decay_steps": 200})
    spaces = spaces_for(cfg)
    a1 = build_actor(cfg, spaces, 0)
    a2 = None
    try:
        c0 = run_actor(a1, 37)  # mid-episode, with transitions pending
        assert sum(len(c.episode_returns) for c in c0) + len(a1._episode_returns) >= 2
        state = roundtrip(a1.state_dict())
        replayed = max(len(a) for a in state["actions"])
        if reseed is None:
            assert replayed == 37  # no episode end reseeded: every action since the start
        else:
            assert replayed < 37
        # a different generation has a different seed: the state must override all of it
        a2 = build_actor(cfg, spaces, 0, generation=generation)
        a2.load_state_dict(state)
        assert a2.steps == a1.steps and a2.env_steps == a1.env_steps
        np.testing.assert_array_equal(a2._obs, a1._obs)
        c1, c2 = run_actor(a1, 60), run_actor(a2, 60)
        assert len(c1) >= 5
        assert sum(len(c.episode_returns) for c in c1) >= 2  # episodes ended after the restore
        _chunks_equal(c1, c2)
    finally:
        a1.close()
        if a2 is not None:
            a2.close()


# ----------------------------------------------------------------------------- evaluator


def greedy_cartpole_return(net, seed: int) -> float:
    env = gymnasium.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        with torch.no_grad():
            a = int(net(torch.from_numpy(np.asarray(obs)[None])).argmax(1)[0])
        obs, r, term, trunc, _ = env.step(a)
        total += float(r)
        done = term or trunc
    env.close()
    return total


def test_evaluator_returns_and_determinism() -> None:
    cfg = actor_cfg()
    spaces = spaces_for(cfg)
    ev1, ev2 = build_evaluator(cfg, spaces), build_evaluator(cfg, spaces)
    net = build_network(cfg, spaces, seed_path=(5,))
    p = flat_params(net)
    try:
        r1 = ev1.evaluate(p, 3)
        r2 = ev2.evaluate(p, 3)
        assert r1.shape == (3,) and r1.dtype == np.float64
        np.testing.assert_array_equal(r1, r2)
        assert np.all((r1 >= 1) & (r1 <= 500)) and np.all(r1 == np.round(r1))
        # the same evaluation index gives the same result again
        ev1.evaluations = 0
        np.testing.assert_array_equal(ev1.evaluate(p, 3), r1)
        # greedy returns from the seeds the evaluator draws for evaluation 0
        rng = np.random.default_rng([ev1.seed, 99, 0])
        seeds = [int(s) for s in rng.integers(2**31 - 1, size=3)]
        expected = sorted(greedy_cartpole_return(net, s) for s in seeds)
        assert sorted(r1.tolist()) == expected
    finally:
        ev1.close()
        ev2.close()


def test_evaluator_more_episodes_than_parallel() -> None:
    cfg = actor_cfg()
    spaces = spaces_for(cfg)
    net = build_network(cfg, spaces)
    p = flat_params(net)
    ev = Evaluator(cfg.env, copy.deepcopy(net), seed=3, max_parallel=2)
    ev_b = Evaluator(cfg.env, copy.deepcopy(net), seed=3, max_parallel=2)
    try:
        r = ev.evaluate(p, 5)
        assert r.shape == (5,) and np.all(r >= 1)
        np.testing.assert_array_equal(r, ev_b.evaluate(p, 5))
        r_next = ev.evaluate(p, 1)  # evaluation index 1: a different seed stream
        assert r_next.shape == (1,)
    finally:
        ev.close()
        ev_b.close()


def test_actor_state_dict_restore_after_param_sync() -> None:
    """The restored actor acts with the synced weights, not its initial ones."""
    cfg = actor_cfg(**{"actor.epsilon_start": 0.5, "actor.epsilon_decay_steps": 200})
    spaces = spaces_for(cfg)
    a1 = build_actor(cfg, spaces, 0)
    a2 = None
    try:
        a1.set_params(3, flat_params(build_network(cfg, spaces, seed_path=(42,))))
        run_actor(a1, 20)
        state = roundtrip(a1.state_dict())
        a2 = build_actor(cfg, spaces, 0)
        a2.load_state_dict(state)
        assert a2.param_version == 3
        np.testing.assert_array_equal(flat_params(a2.net), flat_params(a1.net))
        _chunks_equal(run_actor(a1, 40), run_actor(a2, 40))
    finally:
        a1.close()
        if a2 is not None:
            a2.close()


def test_learner_mixed_precision_learns_finite():
    """bf16 autocast path (CPU here; the same code runs on CUDA): finite loss, float32 params."""
    import numpy as np
    import torch

    from distdqn.config import from_dict
    from distdqn.agents.dqn.spec import transition_batch as SampledBatch
    from distdqn.program import build_learner, spaces_for

    cfg = from_dict({"learner": {"mixed_precision": True, "device": "cpu"}})
    learner = build_learner(cfg, spaces_for(cfg))
    g = torch.Generator().manual_seed(0)
    b = 32
    batch = SampledBatch(obs=torch.randn(b, 4, generator=g), action=torch.randint(0, 2, (b,), generator=g),
                         reward=torch.randn(b, generator=g), discount=torch.full((b,), 0.97),
                         next_obs=torch.randn(b, 4, generator=g), weights=torch.ones(b), keys=np.arange(b))
    before = learner.get_params()
    out = learner.learn(batch)
    assert np.isfinite(out.metrics["td_loss"]) and out.td_abs.dtype == np.float32 and out.td_abs.shape == (b,)
    after = learner.get_params()
    assert after.dtype == np.float32 and not np.array_equal(before, after)


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_evaluator_plays_whole_games_despite_episodic_life(backend) -> None:
    """Training ends an episode at a lost life; evaluation must play the whole game (and
    only report real game ends)."""
    if backend == "envpool":
        pytest.importorskip("envpool")
    from distdqn.config import EnvConfig

    env = EnvConfig(id="ALE/Breakout-v5", envs_per_actor=1, episodic_life=True, max_episode_steps=400,
                    backend=backend)
    spaces = spaces_for(ExperimentConfig(env=env))
    net = make_network(NetworkConfig(), spaces.obs_shape, spaces.num_actions)
    ev = Evaluator(env, net, seed=0, epsilon=1.0)  # random play: lives are lost within 400 steps
    returns = ev.evaluate(flat_params(net), 2)
    ev.close()
    assert returns.shape == (2,) and np.all(returns >= 0)


@pytest.mark.parametrize("env_id, max_steps", [("CartPole-v1", None), ("CartPole-v1", 6),
                                                ("distdqn/StackedFrames-v0", None)])
def test_actor_priorities_reuse_acting_q_values(env_id, max_steps) -> None:
    """Ape-X initial priorities taken from the acting passes (Q(s, a) when acting in s,
    V(s') when acting in s' next, a forward pass only for truncated final observations)
    equal the two-pass computation while the parameters do not change."""
    cfg = ExperimentConfig(env=replace(ExperimentConfig(), **{"env.id": env_id, "env.max_episode_steps": max_steps}).env)
    spaces = spaces_for(cfg)
    actor = build_actor(cfg, spaces, 0)
    actor.maybe_sync(lambda v: (0, flat_params(actor.net)))
    assert actor.spec.compute_priorities
    chunks, ended = [], 0
    while len(chunks) < 6:
        chunk = actor.step()
        if chunk is not None:
            chunks.append(chunk)
            ended += int((chunk.discount == 0).sum())
    while actor.adder.num_staged == 0:  # leave staged transitions for flush to complete
        chunk = actor.step()
        if chunk is not None:
            chunks.append(chunk)
    chunks.append(flush(actor))
    assert actor.adder.num_staged == 0 and len(actor.adder) == 0
    if max_steps is not None:
        # windows cut short by truncation bootstrap with gamma^m, m < n
        assert any((c.discount > actor.spec.gamma ** actor.cfg.n_step + 1e-6).any()
                   for c in chunks)
    for chunk in chunks:
        if chunk.obs is None:  # frame-deduplicated: priorities were taken before compacting
            continue
        full = initial_priorities(actor.net, chunk.obs, chunk.action, chunk.reward, chunk.discount, chunk.next_obs)
        assert np.allclose(chunk.priority, full, atol=1e-5), (chunk.priority, full)
    assert all(c.priority is not None and np.isfinite(c.priority).all() for c in chunks)
    if env_id == "CartPole-v1" and max_steps is None:
        assert ended > 0  # terminated transitions (no bootstrap) were among them
    actor.close()


def test_learner_flushes_denormals_on_cpu() -> None:
    supported = torch.set_flush_denormal(True)  # False where the CPU has no FTZ/DAZ
    try:
        torch.set_flush_denormal(False)
        Learner(lcfg(flush_denormal=False), tiny_net(), torch.device("cpu"))
        assert (torch.tensor([1e-40]) * 1.0).item() != 0.0  # a float32 denormal survives
        Learner(lcfg(), tiny_net(), torch.device("cpu"))
        if supported:
            assert (torch.tensor([1e-40]) * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(True)


def test_auto_device_puts_only_the_nature_cnn_on_cuda(monkeypatch) -> None:
    """learner.device=auto: CUDA (when present) for the Nature CNN, the CPU for an MLP, whose
    update is launch-bound on a GPU; cpu and cuda are taken as given."""
    from types import SimpleNamespace

    from distdqn.config import from_dict
    from distdqn.program import learner_device
    from distdqn.roles.learner import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", "nature_cnn").type == "cuda"
    assert resolve_device("auto", "mlp").type == "cpu"
    assert resolve_device("cuda", "mlp").type == "cuda" and resolve_device("cpu", "nature_cnn").type == "cpu"
    images, vectors = SimpleNamespace(obs_shape=(4, 84, 84)), SimpleNamespace(obs_shape=(4,))
    assert learner_device(from_dict({}), images).type == "cuda"
    assert learner_device(from_dict({}), vectors).type == "cpu"
    assert learner_device(from_dict({"network": {"kind": "nature_cnn"}}), images).type == "cuda"
    assert learner_device(from_dict({"learner": {"device": "cuda"}}), vectors).type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert learner_device(from_dict({}), images).type == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda", "mlp")
