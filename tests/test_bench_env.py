"""Tests of the env mode of ``distdqn bench`` (distdqn.bench_env, distdqn.bench_replay) and
of how ``distdqn bench`` picks its rows and config."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from distdqn.bench import bench_config as _bench_config
from distdqn.bench import bench_mode
from distdqn.bench import FRAME_BYTES, ReplaySpec, SyntheticActor, measure_replay
from distdqn.cli import make_parser
from distdqn.config import ConfigError
from _util import dqn_replay as Replay


def _args(*argv: str) -> argparse.Namespace:
    return make_parser().parse_args(["bench", *argv])


def test_mode_and_config_from_flags(tmp_path) -> None:
    cfg = _bench_config(_args())
    assert (cfg.env.id, cfg.env.backend, cfg.actor.num_actors) == ("CartPole-v1", "gymnasium", 2)
    assert bench_mode(cfg) == "classic" and bench_mode(cfg, "env") == "env"
    cfg = _bench_config(_args("--env", "ALE/Pong-v5"))
    assert bench_mode(cfg) == "env"
    cfg = _bench_config(_args("--env-backend", "envpool", "--actors", "3", "--set", "learner.batch_size=32"))
    assert (cfg.env.backend, cfg.actor.num_actors, cfg.learner.batch_size) == ("envpool", 3, 32)
    assert bench_mode(cfg) == "env" and bench_mode(cfg, "classic") == "classic"
    path = tmp_path / "c.yaml"
    path.write_text("env: {id: ALE/Breakout-v5, envs_per_actor: 2}\nactor: {num_actors: 4}\n")
    cfg = _bench_config(_args("--config", str(path)))  # the file's env and actors are not overridden
    assert (cfg.env.id, cfg.env.envs_per_actor, cfg.actor.num_actors) == ("ALE/Breakout-v5", 2, 4)
    with pytest.raises(ConfigError, match="env.backend"):
        _bench_config(_args("--env-backend", "gym"))


def test_synthetic_actor_chunks_rebuild_in_replay() -> None:
    """Synthetic compact chunks are what the replay expects: every transition alive, about
    one frame per transition, stacks of 4 rebuilt from the pool's frames."""
    pool = np.random.default_rng(0).integers(0, 256, size=(16, 84, 84), dtype=np.uint8)
    actors = [SyntheticActor(i, 3, 3, 40, 32, np.random.default_rng(i), pool) for i in range(2)]
    from distdqn.config import ReplayConfig

    cfg = ReplayConfig(capacity=2000, min_replay_size=32, samples_per_insert=0.0, frame_dedup="on")
    replay = Replay(cfg, 32, (4, 84, 84), np.uint8, seed=0)
    frames = 0
    while replay.inserted < 1500:
        c = actors[replay.inserted % 2].chunk()
        assert c.obs is None and len(c) >= 32 and c.priority.shape == (len(c),)
        frames += len(c.frames)
        replay.insert(c)
    assert len(replay) == replay.inserted
    assert 1.0 <= frames / replay.inserted < 1.1  # one per step plus episode starts (mean 40 steps)
    batch = replay.sample(64)
    obs = batch.obs.numpy()
    assert obs.shape == (64, 4, 84, 84)
    pool_rows = {p.tobytes() for p in pool}
    assert all(f.tobytes() in pool_rows for f in obs.reshape(-1, 84, 84))


def test_measure_replay_frame_dedup_small() -> None:
    """(e, f) at 20,000 transitions in this process: about one 84x84 frame per transition of
    resident memory, and positive rates with their ceilings."""
    spec = ReplaySpec(capacity=20_000, obs_shape=(4, 84, 84), obs_dtype="uint8", frame_dedup=True,
                      batch=64, seconds=0.3, mean_episode=200)
    r = measure_replay(spec)
    assert r["inserted"] >= 20_000 and r["alive"] == 20_000
    assert 0.9 * FRAME_BYTES < r["bytes_per_transition"] < 1.25 * FRAME_BYTES
    for key in ("insert_tps", "insert_ceiling_tps", "sample_update_per_s", "sample_ceiling_per_s"):
        assert r[key] > 0
    assert r["sample_ceiling_per_s"] > r["sample_update_per_s"]  # a bare gather does less
    json.dumps(r)  # plain values (it crosses a process boundary and goes to --json)


@pytest.mark.slow
def test_bench_env_rows_cartpole_end_to_end(tmp_path) -> None:
    """``distdqn bench --rows env`` on CartPole: every row (a)-(f) measured, JSON written."""
    from distdqn.bench import main

    out = tmp_path / "b.json"
    args = _args("--rows", "env", "--quick", "--seconds", "1", "--replay-capacity", "20000", "--json", str(out))
    assert main(args) == 0
    rep = json.loads(out.read_text())
    assert rep["mode"] == "env" and rep["backend"] == "gymnasium"
    labels = [r["label"][:3] for r in rep["rows"]]
    assert labels == ["(a)", "(a'", "(b)", "(b)", "(c)", "(d)", "(e)", "(e)", "(f)"]
    assert all(r["value"] and r["value"] > 0 for r in rep["rows"])
    assert rep["replay"]["capacity"] == 20_000 and not rep["replay"]["frame_dedup"]
    assert rep["raw_env"]["sps"] > 0 and rep["collection"]["sps"] > 0
    # inference costs something: env + forward is slower than the env alone (1.1: noise margin)
    assert 0 < rep["raw_env_forward"]["sps"] < 1.1 * rep["raw_env"]["sps"]
