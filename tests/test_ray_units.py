"""The Ray runtime's plain pieces, without Ray: shard de-duplication and accounting,
multi-batch sampling, and importance weights across shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distdqn.config import from_dict
from distdqn.agents.dqn.spec import transition_batch as SampledBatch
from distdqn.agents.dqn.spec import transition_chunk as TransitionChunk
from distdqn.program import spaces_for
from distdqn.runtime.ray import ShardCore, _global_weights, batch_from_numpy, batch_to_numpy


def chunk(t: int = 8, env_steps: int = 8, nan: int = 0, returns=()) -> TransitionChunk:
    rng = np.random.default_rng(t)
    reward = np.ones(t, np.float32)
    reward[:nan] = np.nan
    return TransitionChunk(obs=rng.standard_normal((t, 4)).astype(np.float32), action=np.zeros(t, np.int64),
                           reward=reward, discount=np.full(t, 0.99, np.float32),
                           next_obs=rng.standard_normal((t, 4)).astype(np.float32),
                           priority=np.ones(t, np.float32), actor_id=0, param_version=3,
                           episode_returns=list(returns), episode_lengths=[10] * len(returns), env_steps=env_steps)


def core(**replay) -> ShardCore:
    cfg = from_dict({"replay": {"min_replay_size": 64, "capacity": 1000, **replay}, "learner": {"batch_size": 16}})
    return ShardCore(cfg, spaces_for(cfg))


def test_retried_insert_is_not_inserted_twice():
    c = core()
    src = (0, 12345)
    assert c.insert(src, 0, chunk()) == "ok"
    assert c.insert(src, 0, chunk()) == "dup"  # a retried call that had already landed
    assert c.insert(src, 1, chunk()) == "ok"
    assert c.insert((0, 999), 0, chunk()) == "ok"  # a restarted actor (new incarnation) starts at 0
    s = c.drain_stats()
    assert len(c.replay) == 24 and s["duplicates"] == 1
    assert s["ingest"].produced == 24 and s["ingest"].inserted == 24


def test_accounting_rejects_nonfinite_and_drops_after_stop():
    c = core()
    c.insert((1, 1), 0, chunk(nan=3, returns=[5.0]))
    c.stopping = True
    assert c.can_insert(chunk())  # a stopping shard never makes an actor wait
    assert c.insert((1, 1), 1, chunk()) == "dropped"
    s = c.drain_stats()["ingest"]
    assert (s.produced, s.inserted, s.rejected, s.dropped) == (16, 5, 3, 8)
    assert s.produced == s.inserted + s.rejected + s.dropped
    assert s.env_steps == 16 and s.episode_returns == [5.0] and s.param_versions == [3, 3]
    again = c.drain_stats()["ingest"]  # deltas: drained once
    assert again.produced == 0 and again.episode_returns == []


def test_a_draining_shard_takes_inserts_past_the_rate_limiter_and_keeps_them():
    """A graceful stop (ReplayShardRole.drain): what is in flight is inserted, not dropped,
    even where the rate limiter would refuse it."""
    c = core(samples_per_insert=1.0, min_replay_size=16, error_buffer=64)
    for seq in range(50):
        if not c.can_insert(chunk()):
            break
        c.insert((0, 1), seq, chunk())
    assert not c.can_insert(chunk())  # the limiter waits for samples that will not come
    c.draining = True
    assert c.can_insert(chunk())
    assert c.insert((0, 1), 100, chunk()) == "ok"
    s = c.drain_stats()["ingest"]
    assert s.dropped == 0 and s.produced == s.inserted == len(c.replay)


def test_sample_applies_priorities_then_draws_up_to_count():
    c = core(samples_per_insert=0)
    for seq in range(4):
        c.insert((0, 1), seq, chunk(t=16))
    out = c.sample(16, count=3)
    assert len(out["batches"]) == 3 and out["size"] == 64
    b = out["batches"][0]
    assert b["obs"].shape == (16, 4) and b["probs"].shape == (16,)
    keys = b["keys"]
    mass_before = out["mass"]
    out2 = c.sample(16, priority_updates=[(keys, np.full(16, 100.0))], count=1)
    assert out2["mass"] > mass_before  # the update landed before the draw


def test_sample_respects_rate_limiter():
    c = core(samples_per_insert=4.0)
    assert c.sample(16, count=4)["batches"] == []  # below min_replay_size
    for seq in range(8):
        c.insert((0, 1), seq, chunk(t=8))
    got = c.sample(16, count=1000)["batches"]
    # inserts 64 x spi 4 = 256 sampled transitions earned, plus the error buffer (4 x 16)
    assert 0 < len(got) * 16 <= 64 * 4 + 4 * 16


def test_batch_numpy_roundtrip():
    b = SampledBatch(obs=torch.randn(4, 2), action=torch.arange(4), reward=torch.ones(4), discount=torch.ones(4),
                     next_obs=torch.randn(4, 2), weights=torch.ones(4), keys=np.arange(4), probs=np.full(4, 0.25))
    back = batch_from_numpy(batch_to_numpy(b))
    for k in ("obs", "action", "reward", "discount", "next_obs", "weights"):
        assert torch.equal(getattr(back, k), getattr(b, k))
    assert np.array_equal(back.keys, b.keys) and np.array_equal(back.probs, b.probs)


def test_global_weights_one_shard_equals_replay_weights():
    c = core(samples_per_insert=0)
    for seq in range(4):
        c.insert((0, 1), seq, chunk(t=16))
    data = c.sample(16)["batches"][0]
    b = batch_from_numpy(data)
    local = b.weights.clone()
    beta = c.replay.beta  # the next draw's; annealing moved it by one step only
    _global_weights(b, c.mass(), np.array([c.mass()]), np.array([len(c.replay)]), beta)
    assert torch.allclose(b.weights, local, rtol=1e-3)


def test_global_weights_two_shards_hand_computed():
    probs = np.array([0.5, 0.25])
    b = SampledBatch(obs=torch.zeros(2, 1), action=torch.zeros(2, dtype=torch.int64), reward=torch.zeros(2),
                     discount=torch.zeros(2), next_obs=torch.zeros(2, 1), weights=torch.ones(2),
                     keys=np.arange(2), probs=probs)
    # the batch's shard holds 1/4 of the mass; 100 items in all
    _global_weights(b, 1.0, np.array([1.0, 3.0]), np.array([50, 50]), beta=1.0)
    p = probs * 0.25
    w = (100 * p) ** -1.0
    assert np.allclose(b.weights.numpy(), w / w.max())
    assert b.weights[0] == pytest.approx(0.5)


@pytest.mark.parametrize("data, key", [
    ({"runtime": "ray", "colocate": True, "preset": "sync"}, "colocate"),
    ({"runtime": "ray", "ray": {"replay_shards": 0}}, "ray.replay_shards"),
    ({"runtime": "ray", "ray": {"replay_shards": 40}}, "replay.min_replay_size"),
    ({"runtime": "ray", "replay": {"placement": "per_actor"}}, "replay.placement"),
])
def test_ray_config_errors_name_the_key(data, key):
    from distdqn.config import ConfigError

    with pytest.raises(ConfigError) as err:
        from_dict(data)
    assert err.value.key == key
