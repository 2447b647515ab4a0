"""The actor-critic agent and its topologies, impala and a3c: unrolls, the acting policy, the
loss, the presets, A3C's pushed gradient, and learning CartPole (serial, env-step budget)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distdqn.agents.actor_critic.agent import SoftmaxPolicy
from distdqn.agents.actor_critic.unroll import UnrollAdder, unroll_spec
from distdqn.config import ConfigError, from_dict
from distdqn.program import build_actor, build_learner, build_replay, spaces_for


def test_unrolls_cut_every_t_steps_and_mark_episode_ends():
    adder = UnrollAdder(num_envs=2, unroll_length=3, gamma=0.9, spec=unroll_spec((1,), "float32", 3))
    term = [np.array([False, False]), np.array([True, False]), np.array([False, False])]
    trunc = [np.array([False, False]), np.array([False, True]), np.array([False, False])]
    for t in range(3):
        assert adder.pop_items() is None
        obs = np.array([[t], [10 + t]], np.float32)
        adder.add(obs, np.array([t, t]), np.array([1.0, 2.0]), obs + 0.5, term[t], trunc[t],
                  behaviour_logp=np.array([-0.1, -0.2]))
    assert adder.num_recorded == 2
    data, priority = adder.pop_items()
    assert priority is None and adder.num_recorded == 0
    assert data["obs"].shape == (2, 3, 1) and data["action"].tolist() == [[0, 1, 2], [0, 1, 2]]
    np.testing.assert_allclose(data["discount"], [[0.9, 0.0, 0.9], [0.9, 0.9, 0.9]])  # terminated: 0
    np.testing.assert_allclose(data["continues"], [[1, 0, 1], [1, 0, 1]])  # truncated ends the episode too
    np.testing.assert_allclose(data["next_obs"][1, :, 0], [10.5, 11.5, 12.5])  # each step's own next obs
    np.testing.assert_allclose(data["behaviour_logp"][0], [-0.1, -0.1, -0.1])


def test_softmax_policy_samples_from_the_softmax_and_records_its_log_probability():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    net = lambda obs: torch.cat([logits.expand(obs.shape[0], -1), torch.zeros(obs.shape[0], 1)], dim=1)  # noqa: E731
    pol = SoftmaxPolicy(net, num_envs=4000, rng=np.random.default_rng(0))
    actions = pol.act(np.zeros((4000, 2), np.float32), 0)
    want = torch.softmax(logits, dim=1).numpy()[0]
    np.testing.assert_allclose(np.bincount(actions, minlength=3) / 4000, want, atol=0.02)
    logp = pol.acting_values(actions)["behaviour_logp"]
    np.testing.assert_allclose(logp, np.log(want)[actions], rtol=1e-5)


def test_impala_preset_builds_a_fifo_of_unrolls_and_the_learner_steps_on_them():
    cfg = from_dict({"preset": "impala", "runtime": "serial", "actor": {"num_actors": 1}})
    assert (cfg.agent, cfg.topology, cfg.replay.kind) == ("actor_critic", "impala", "fifo")
    spaces = spaces_for(cfg)
    actor, replay, learner = build_actor(cfg, spaces, 0), build_replay(cfg, spaces), build_learner(cfg, spaces)
    while not replay.can_sample(cfg.learner.batch_size):
        chunk = actor.tick(lambda newer_than: None)
        if chunk is not None:
            assert len(chunk) == cfg.actor.chunk_size and chunk.priority is None
            replay.insert(chunk)
    before = learner.get_params()
    out = learner.learn(replay.sample(cfg.learner.batch_size))
    assert out.priorities is None
    assert {"impala_loss", "pg_loss", "value_loss", "policy_entropy", "vtrace_rho_mean"} <= set(out.metrics)
    assert out.metrics["vtrace_rho_mean"] == pytest.approx(1.0, abs=1e-4)  # on-policy: pi = mu
    assert 0 < out.metrics["policy_entropy"] <= np.log(2) + 1e-6
    assert not np.array_equal(before, learner.get_params())
    assert not replay.can_sample(cfg.learner.batch_size)  # FIFO: each unroll read once


@pytest.mark.parametrize("data, key", [
    ({"agent": "actor_critic"}, "topology"),
    ({"preset": "impala", "topology": "apex"}, "topology"),
    ({"preset": "impala", "network": {"dueling": True}}, "network.dueling"),
])
def test_invalid_actor_critic_combinations_are_refused_naming_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        cfg = from_dict(data)
        build_learner(cfg, spaces_for(cfg))
    assert err.value.key == key


def _train_serial(tmp_path: Path, preset: str, budget: int) -> tuple[dict, Path]:
    """``distdqn train --preset PRESET --runtime serial`` on CartPole-v1, seed 0: the summary,
    which must say solved (greedy eval >= 475 within ``budget`` env steps)."""
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "distdqn.cli", "train", "--preset", preset, "--runtime", "serial",
                        "--env", "CartPole-v1", "--total-env-steps", str(budget), "--seed", "0", "--no-progress",
                        "--run-dir", str(run), "--set", "eval.eval_period=10000"],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((run / "summary.json").read_text())
    assert s["solved"] and s["final_eval_return"] >= 475, s
    return s, run


@pytest.mark.slow
def test_impala_learns_cartpole_in_the_serial_runtime(tmp_path):
    s, run = _train_serial(tmp_path, "impala", 200_000)
    assert s["accounting_ok"] and s["dropped"] == 0
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"policy_entropy", "vtrace_rho_mean", "param_lag"} <= set(header)


@pytest.mark.parametrize("data", [{"replay": {"kind": "fifo"}}, {"preset": "impala", "replay": {"kind": "prioritized"}}])
def test_replay_kind_must_suit_the_agent(data):
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    assert err.value.key == "replay.kind"


def test_a_fifo_replay_takes_no_rate_limiter():
    with pytest.raises(ConfigError) as err:
        from_dict({"preset": "impala", "replay": {"samples_per_insert": 4}})
    assert err.value.key == "replay.samples_per_insert"


@pytest.mark.slow
def test_impala_runs_pong_end_to_end(tmp_path):
    pytest.importorskip("ale_py")
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "distdqn.cli", "train", "--config", "configs/pong-impala.yaml",
                        "--total-env-steps", "1500", "--no-progress", "--run-dir", str(run)],
                       capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    s = json.loads((run / "summary.json").read_text())
    assert s["env_steps"] >= 1500 and s["updates"] > 0 and s["accounting_ok"]
    assert s["final_eval_return"] is not None


# ----------------------------------------------------------------------------- A3C


def test_a3c_pushes_the_gradient_of_the_actor_critic_loss_on_its_own_rollout():
    """The gradient a worker pushes equals the gradient of the same loss, computed in one
    plain autograd pass on the same rollout with the same parameters."""
    from distdqn.agents.actor_critic.loss import impala_loss
    from distdqn.core import load_flat_params
    from distdqn.program import build_network, build_parameter_server
    from distdqn.topologies import make_updater

    cfg = from_dict({"preset": "a3c", "runtime": "serial", "learner": {"max_grad_norm": None}})
    spaces = spaces_for(cfg)
    replay, ps = build_replay(cfg, spaces), build_parameter_server(cfg, spaces)
    up = make_updater(cfg, spaces, ps)
    actors = [build_actor(cfg, spaces, i) for i in range(2)]
    while not up.can_step(replay):
        for a in actors:
            chunk = a.tick(lambda newer_than: None)
            if chunk is not None:
                replay.insert(chunk)
    pushed = []
    ps_apply = ps.apply_gradients
    ps.apply_gradients = lambda grads, version: pushed.append(grads.clone()) or ps_apply(grads, version)
    start = ps.get_params()[1].copy()
    batch = replay.pools[0].sample(cfg.learner.batch_size)  # what worker 0 will read: its pool's oldest unrolls
    replay.pools[0].sampler.next_read -= cfg.learner.batch_size  # put them back
    up.step(replay)
    net = build_network(cfg, spaces)
    load_flat_params(net, start)
    out = impala_loss(net, None, batch, **{k: getattr(cfg.actor_critic, k) for k in
                                          ("rho_bar", "c_bar", "rho_bar_pg", "value_coef", "entropy_coef")})
    out.loss.backward()
    want = torch.cat([p.grad.reshape(-1) for p in net.state_dict(keep_vars=True).values() if p.requires_grad])
    assert len(pushed) == 1 and pushed[0].shape == want.shape
    torch.testing.assert_close(pushed[0], want, rtol=1e-5, atol=1e-6)


def test_a3c_workers_read_only_their_own_actors_rollouts():
    from distdqn.program import build_parameter_server
    from distdqn.topologies import make_updater

    cfg = from_dict({"preset": "a3c", "runtime": "serial"})
    spaces = spaces_for(cfg)
    replay, ps = build_replay(cfg, spaces), build_parameter_server(cfg, spaces)
    up = make_updater(cfg, spaces, ps)
    actor0 = build_actor(cfg, spaces, 0)
    while not replay.can_sample(cfg.learner.batch_size, pool=0):
        chunk = actor0.tick(lambda newer_than: None)
        if chunk is not None:
            replay.insert(chunk)
    assert up.can_step(replay)  # worker 0's turn, its pool has a rollout
    up.step(replay)
    assert not up.can_step(replay)  # worker 1's turn: actor 1 has sent nothing yet
    assert ps.applied_updates == 1


@pytest.mark.parametrize("data, key", [
    ({"preset": "a3c", "actor": {"num_actors": 3}}, "actor.num_actors"),
    ({"preset": "a3c", "replay": {"placement": "central"}}, "replay.placement"),
    ({"preset": "a3c", "runtime": "ray", "ray": {"replay_shards": 1}}, "ray.replay_shards"),
])
def test_invalid_a3c_configs_are_refused_naming_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    assert err.value.key == key


@pytest.mark.slow
def test_a3c_learns_cartpole_in_the_serial_runtime(tmp_path):
    s, _ = _train_serial(tmp_path, "a3c", 250_000)
    assert s["accounting_ok"] and s["staleness_mean"] is not None
