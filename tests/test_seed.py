"""SEED RL (topology seed): dynamic batching, the items its inference server builds, the
serial runtime's determinism, the local runtime's env workers and server failing, config."""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest
from _util import config_with
from test_runtime import (  # noqa: F401  (autouse fixture)
    _kill_started_runs,
    _spawned_pids,
    _start_train,
    _wait_for,
    run_serial_cfg,
)

from distdqn.config import ConfigError, inference_batch
from distdqn.envs import env_spaces
from distdqn.program import build_agent, build_network
from distdqn.roles.actor import Actor, ActorSpec
from distdqn.roles.env_worker import EnvWorker, HalfStep, split_sizes
from distdqn.roles.inference import DynamicBatcher, InferenceServer
from distdqn.runtime.local.seed import WorkerBlock, read_step, write_step

CLI = [sys.executable, "-m", "distdqn.cli"]


def test_a_pass_is_due_at_max_batch_observations():
    b = DynamicBatcher(max_batch=8, max_wait=10.0)
    b.add(0, 4, now=0.0)
    assert not b.due(0.001)
    b.add(1, 4, now=0.001)
    assert b.due(0.001)  # 8 observations wait, long before max_wait
    assert b.take() == [0, 1] and len(b) == 0 and not b.due(0.002)


def test_a_pass_is_due_at_max_wait_with_fewer_observations():
    b = DynamicBatcher(max_batch=64, max_wait=0.25)
    b.add(3, 4, now=1.0)
    b.add(5, 4, now=1.125)
    assert not b.due(1.125)
    assert b.timeout(1.125, idle=0.1) == 0.125
    assert b.due(1.25)  # the oldest has waited max_wait
    assert b.take() == [3, 5]
    assert b.timeout(2.0, idle=0.1) == 0.1


def test_a_pass_takes_the_oldest_requests_up_to_max_batch():
    b = DynamicBatcher(max_batch=8, max_wait=0.0)
    for k, t in [(2, 0.3), (0, 0.1), (1, 0.2)]:
        b.add(k, 4, now=t)
    assert b.take() == [2, 0]  # in arrival order, 8 observations
    b.add(2, 4, now=0.4)  # a slot asks again: behind the ones waiting
    assert b.take() == [1, 2]
    b.add(7, 20, now=0.5)  # a request larger than max_batch is taken alone
    assert b.take() == [7]


def test_split_sizes():
    assert split_sizes(8, 2) == [4, 4] and split_sizes(3, 1) == [3]
    with pytest.raises(ValueError, match="5 envs cannot be split into 2"):
        split_sizes(5, 2)


R2D2_SMALL = {"env.id": "distdqn/CartPoleMasked-v0", "r2d2.sequence_length": 8, "r2d2.sequence_period": 4,
              "r2d2.burn_in": 4, "r2d2.lstm_size": 16, "network.hidden_sizes": [16]}


@pytest.mark.parametrize("agent_name", ["dqn", "r2d2"])
def test_the_server_builds_the_items_an_apex_actor_builds_from_the_same_stream(agent_name):
    """An apex actor steps CartPole; its stream of observations, actions and env results is
    replayed into an inference-server slot (its actions taken from the stream): the chunks,
    initial priorities and episode figures are equal, including truncations (a short
    time limit) and episode ends inside n-step windows. For r2d2 the sequences' stored
    states come from the server's batched pass, which carries each env's LSTM state."""
    extra = {"actor.chunk_size": 32} if agent_name == "dqn" else {"actor.chunk_size": 4, **R2D2_SMALL}
    cfg = config_with({"preset": "apex" if agent_name == "dqn" else "r2d2"}, **{"actor.trace_network": False, "env.envs_per_actor": 4,
                             "env.kwargs": {"max_episode_steps": 30}, **extra})
    spaces = env_spaces(cfg.env)
    agent = build_agent(cfg, spaces)
    spec = ActorSpec(actor_id=0, num_actors=1, seed=11, gamma=cfg.learner.gamma, compute_priorities=True)
    apex = Actor(spec, cfg.env, cfg.actor, agent, build_network(cfg, spaces))
    stream: list[dict] = []
    step, reset_done = apex.runner.step, apex.runner.reset_done

    def recording_step(actions):
        out = step(actions)
        next_obs, reward, terminated, truncated, info = out
        done = terminated | truncated
        returns, lengths = apex.runner.episode_stats(info, done)
        stream.append({"actions": actions.copy(), "step": HalfStep(next_obs.copy(), np.asarray(reward, float),
                                                                    terminated.copy(), truncated.copy(), None,
                                                                    returns, lengths)})
        return out

    def recording_reset(done):
        obs = reset_done(done)
        stream[-1]["step"].reset_obs = obs.copy()
        return obs

    apex.runner.step, apex.runner.reset_done = recording_step, recording_reset
    first = apex.obs.copy()
    want = [c for c in (apex.step() for _ in range(120)) if c is not None]
    assert len(want) >= 3
    assert any(r["step"].truncated.any() for r in stream) and any(r["step"].terminated.any() for r in stream)

    server = InferenceServer(cfg, agent, build_network(cfg, spaces), 1, lambda k, g: spec)
    assert server.open(0, 0, first) is None
    got = []
    for rec in stream:
        server.infer([0])
        server._actions[0] = rec["actions"]  # the stream's actions (the acting values are the pass's)
        c = server.observe(0, rec["step"])
        if c is not None:
            got.append(c)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.data.keys() == w.data.keys()
        for key in w.data:
            np.testing.assert_array_equal(g.data[key], w.data[key], err_msg=key)
        np.testing.assert_array_equal(g.priority, w.priority)
        assert g.episode_returns == w.episode_returns and g.episode_lengths == w.episode_lengths
        assert g.env_steps == w.env_steps
    assert any(w.episode_returns for w in want)
    if agent_name == "dqn":
        assert any((w.discount == 0).any() for w in want)
    else:
        assert any(w.data["terminated"].any() for w in want)
        assert any(np.abs(w.data["h0"]).sum() > 0 for w in want)  # stored states were carried


def test_closing_a_slot_sends_its_complete_items_and_counts_its_open_windows():
    cfg = config_with({"preset": "seed"}, **{"actor.trace_network": False})
    spaces = env_spaces(cfg.env)
    spec = ActorSpec(actor_id=0, num_actors=1, seed=3, gamma=cfg.learner.gamma, compute_priorities=True)
    server = InferenceServer(cfg, build_agent(cfg, spaces), build_network(cfg, spaces), 1, lambda k, g: spec)
    worker = EnvWorker(cfg.env, 2, np.random.default_rng(0), 0)
    server.open(0, 0, worker.reset(0))
    for _ in range(5):
        (actions,) = server.infer([0])
        assert server.observe(0, worker.step(0, actions)) is None
    last = server.close(0)
    # 5 steps of 4 envs: 20 windows begun; n = 3, so the first 2 steps' windows are complete
    # (unless an episode ended, which 5 CartPole steps cannot), the rest open.
    assert len(last) + last.dropped == 20 and len(last) == 4 * 2 and last.dropped == 12
    assert last.env_steps == 20 and server.slots[0] is None and server.close(0) is None


def test_shared_memory_block_round_trips_a_step():
    block = WorkerBlock(2, 3, (4,), np.float32)
    raw = bytearray(block.nbytes)
    v = block.views(raw)
    step = HalfStep(np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1.0, -2.0, 0.5]),
                    np.array([False, True, False]), np.array([False, False, True]),
                    np.ones((3, 4), np.float32), [9.0, 4.5], [9, 3])
    write_step(v, 1, step)
    got = read_step(v, 1)
    np.testing.assert_array_equal(got.next_obs, step.next_obs)
    np.testing.assert_array_equal(got.reward, step.reward)
    np.testing.assert_array_equal(got.terminated, step.terminated)
    np.testing.assert_array_equal(got.reset_obs, step.reset_obs)
    assert got.returns == [9.0, 4.5] and got.lengths == [9, 3] and not got.restarted
    write_step(v, 0, HalfStep(step.next_obs, step.reward, step.terminated * 0, step.truncated * 0, restarted=True))
    r0 = read_step(v, 0)
    assert r0.restarted and r0.reset_obs is None and r0.returns == []
    assert read_step(v, 1).returns == [9.0, 4.5]  # halves are apart


def test_serial_seed_is_deterministic(tmp_path):
    cfg = config_with({"preset": "seed"}, runtime="serial", total_env_steps=3000, progress=False,
                      **{"eval.eval_period": 0, "eval.eval_episodes": 2, "replay.min_replay_size": 256})
    a = run_serial_cfg(cfg, tmp_path / "a")
    run_serial_cfg(cfg, tmp_path / "b")
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()
    assert a["env_steps"] >= 3000 and a["updates"] > 0 and a["accounting_ok"] and a["dropped"] == 0
    header = (tmp_path / "a" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "inference_batch" in header and "inference_latency_ms_p50" not in header  # no wall-clock column


def test_seed_with_the_r2d2_agent_takes_both_sets_of_defaults_and_runs_serially(tmp_path):
    """``--preset seed --agent r2d2`` (SEED RL's own pairing): R2D2's settings and SEED's
    halves; the serial run is deterministic and its sequences reach the learner."""
    cfg = config_with({"preset": "seed", "agent": "r2d2"})
    assert (cfg.learner.gamma, cfg.replay.priority_exponent, cfg.actor.n_step) == (0.997, 0.9, 5)
    assert (cfg.env.envs_per_actor, inference_batch(cfg)) == (8, 8)
    with pytest.raises(ConfigError, match="agent='r2d2' with topology='gorila'.*apex, seed"):
        config_with({"agent": "r2d2", "topology": "gorila"})
    cfg = config_with({"preset": "seed", "agent": "r2d2"}, runtime="serial", total_env_steps=2000, progress=False,
                      **{**R2D2_SMALL, "replay.min_replay_size": 32, "eval.eval_period": 0, "eval.eval_episodes": 1})
    a = run_serial_cfg(cfg, tmp_path / "a")
    run_serial_cfg(cfg, tmp_path / "b")
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()
    assert a["env_steps"] >= 2000 and a["updates"] > 0 and a["accounting_ok"] and a["dropped"] == 0


def test_seed_config_errors():
    with pytest.raises(ConfigError, match="env.envs_per_actor.*multiple of inference.splits"):
        config_with({"preset": "seed"}, **{"env.envs_per_actor": 5})
    with pytest.raises(ConfigError, match="inference.splits"):
        config_with({"preset": "seed"}, **{"inference.splits": 3})
    with pytest.raises(ConfigError, match="inference.max_batch"):
        config_with({"preset": "seed"}, **{"inference.max_batch": 0})


def _seed_run(tmp_path, *extra):
    return _start_train(tmp_path, "--preset", "seed", "--set", "eval.target_return=null",
                        "--set", "eval.separate_process=false", *extra)


def _summary(proc, run) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return json.loads((run / "summary.json").read_text())


@pytest.mark.slow
def test_local_killed_env_worker_is_restarted_and_its_open_items_counted(tmp_path):
    proc, run = _seed_run(tmp_path, "--total-env-steps", "30000")
    _wait_for(lambda: len(_spawned_pids(proc.pid)) == 3)  # 2 env workers, then the server
    _wait_for(lambda: (run / "metrics.csv").exists() and (run / "metrics.csv").read_text().count("\n") >= 2)
    worker = _spawned_pids(proc.pid)[0]
    os.kill(worker, signal.SIGKILL)
    s = _summary(proc, run)
    assert s["actor_restarts"] == 1
    assert s["env_steps"] >= 30000 and s["updates"] > 1000
    assert s["produced"] == s["inserted"] + s["rejected"] + s["dropped"]
    assert s["dropped"] > 0  # the killed worker's open n-step windows, counted by the server


@pytest.mark.slow
def test_local_killed_inference_server_is_restarted_with_its_workers(tmp_path):
    proc, run = _seed_run(tmp_path, "--total-env-steps", "30000")
    _wait_for(lambda: len(_spawned_pids(proc.pid)) == 3)
    _wait_for(lambda: (run / "metrics.csv").exists() and (run / "metrics.csv").read_text().count("\n") >= 2)
    first = _spawned_pids(proc.pid)
    os.kill(first[-1], signal.SIGKILL)
    _wait_for(lambda: len(set(_spawned_pids(proc.pid)) - set(first)) == 3)  # a new server and new workers
    s = _summary(proc, run)
    assert s["actor_restarts"] == 1
    assert s["env_steps"] >= 30000 and s["accounting_ok"]


@pytest.mark.slow
def test_local_seed_learns_cartpole(tmp_path):
    proc, run = _start_train(tmp_path, "--preset", "seed", "--total-env-steps", "100000",
                             "--set", "eval.eval_episodes=10")
    s = _summary(proc, run)
    assert s["stop_reason"] == "target_return" and s["env_steps"] <= 100_000
    assert s["dropped"] == 0 and s["accounting_ok"]


def test_seed_bench_rows_compare_the_same_envs_and_processes():
    from distdqn.bench.cli import bench_mode
    from distdqn.bench.seed_rows import latency_config, topology_config

    cfg = config_with({}, **{"actor.num_actors": 2})
    apex, seed = topology_config(cfg, "apex", 64), topology_config(cfg, "seed", 64)
    assert (apex.topology, seed.topology) == ("apex", "seed")
    assert apex.env.envs_per_actor == seed.env.envs_per_actor == 64
    assert apex.actor.num_actors == seed.actor.num_actors == 2
    assert seed.inference.max_batch == 64  # one half of each of the 2 workers
    rt = latency_config(cfg)  # the round-trip run: every pass one request of 64
    assert (rt.topology, rt.actor.num_actors, rt.env.envs_per_actor, rt.inference.max_batch) == ("seed", 1, 128, 64)
    assert bench_mode(cfg, "seed") == "seed"
