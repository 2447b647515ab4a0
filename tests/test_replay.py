"""Tests of distdqn.replay: sum tree, ring storage, rate limiter and Replay."""

from __future__ import annotations

import io

import numpy as np
import pytest
from _util import torch_roundtrip
import torch

from distdqn.config import ConfigError, ReplayConfig
from distdqn.agents.dqn.spec import transition_chunk as TransitionChunk
from _util import dqn_replay as Replay
from _util import dqn_replay as make_replay
from _util import dqn_ring_storage as RingStorage
from distdqn.replay import RateLimiter, SumTree

# Upper 0.1% points of the chi-square distribution (scipy.stats.chi2.ppf(0.999, dof)).
CHI2_CRIT_P001 = {3: 16.266, 7: 24.322, 9: 27.877}


def make_chunk(start: int, t: int, priority: np.ndarray | None = None, obs_dim: int = 4) -> TransitionChunk:
    """T transitions whose contents encode their id ``start + i`` (obs[:, 0], action, reward)."""
    ids = np.arange(start, start + t)
    obs = np.zeros((t, obs_dim), np.float32)
    obs[:, 0] = ids
    return TransitionChunk(
        obs=obs,
        action=ids.astype(np.int64),
        reward=ids.astype(np.float32),
        discount=np.full(t, 0.99, np.float32),
        next_obs=obs + 1.0,
        priority=None if priority is None else np.asarray(priority, np.float32),
    )


def cfg(**changes: object) -> ReplayConfig:
    base: dict[str, object] = dict(
        kind="prioritized", capacity=100, min_replay_size=1, samples_per_insert=0.0, initial_priority="actor"
    )
    base.update(changes)
    return ReplayConfig(**base)  # type: ignore[arg-type]


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


# ----------------------------------------------------------------------------- sum tree


def test_sum_tree_total_and_prefix_search_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    cap = 1000  # not a power of two: exercises the padding
    tree = SumTree(cap)
    values = rng.exponential(1.0, cap)
    values[rng.choice(cap, 100, replace=False)] = 0.0  # some zero-priority leaves
    tree.update(np.arange(cap), values)
    assert tree.total() == pytest.approx(values.sum(), rel=1e-12)
    np.testing.assert_array_equal(tree[np.arange(cap)], values)

    prefix = rng.random(20_000) * tree.total()
    got = tree.find_prefix_sum(prefix)
    want = np.searchsorted(np.cumsum(values), prefix, side="right")
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64
    assert (values[got] > 0).all()


def test_sum_tree_never_returns_zero_leaf_at_the_edges() -> None:
    tree = SumTree(13)
    tree.update(np.array([0, 2, 5]), np.array([0.1, 0.2, 0.3]))  # slots 6..12 and padding empty
    total = tree.total()
    edges = np.array([0.0, -1.0, total, np.nextafter(total, 0.0), total * 2, 0.1, 0.31])
    got = tree.find_prefix_sum(edges)
    assert set(got.tolist()) <= {0, 2, 5}
    assert got[0] == 0 and got[1] == 0
    assert got[2] == 5 and got[3] == 5 and got[4] == 5
    assert got[5] == 2 and got[6] == 5  # 0.1 lands exactly at cumsum[0] -> next positive leaf


def test_sum_tree_duplicate_indices_last_write_wins() -> None:
    tree = SumTree(8)
    tree.update(np.array([3, 3, 5, 3]), np.array([1.0, 2.0, 4.0, 7.0]))
    assert tree[np.array([3])][0] == 7.0
    assert tree.total() == 11.0
    tree.update(np.array([5, 5]), np.array([0.5, 0.25]))
    assert tree.total() == 7.25


def test_sum_tree_internal_nodes_are_a_function_of_the_leaves() -> None:
    rng = np.random.default_rng(1)
    a = SumTree(777)
    for _ in range(50):
        idx = rng.integers(0, 777, 64)
        a.update(idx, rng.random(64))
    b = SumTree(777)
    b.set_leaves(a.leaves())
    np.testing.assert_array_equal(a._tree, b._tree)  # bit-identical, so sampling is identical
    prefixes = rng.random(1000) * a.total()
    np.testing.assert_array_equal(a.find_prefix_sum(prefixes), b.find_prefix_sum(prefixes))


@pytest.mark.parametrize("capacity", [777, 1024])
def test_sum_tree_contiguous_runs_match_a_rebuild(capacity) -> None:
    """Ring-buffer inserts (contiguous runs, the slice path) interleaved with scattered
    priority updates leave the same tree as a rebuild from the leaves."""
    rng = np.random.default_rng(2)
    a = SumTree(capacity)
    start = 0
    for _ in range(60):
        k = int(rng.integers(1, 130))
        run = (start + np.arange(k)) % capacity  # wraps around sometimes (then not contiguous)
        a.update(run, rng.random(k))
        start = (start + k) % capacity
        a.update(rng.integers(0, capacity, 32), rng.random(32))
    a.update(np.array([capacity - 1]), np.array([0.5]))  # runs of one at the edges
    a.update(np.array([0]), np.array([0.25]))
    b = SumTree(capacity)
    b.set_leaves(a.leaves())
    np.testing.assert_array_equal(a._tree, b._tree)


@pytest.mark.parametrize("capacity", [3, 2048, 3000, 100_000])
def test_sum_tree_top_level_search_matches_plain_descent(capacity, monkeypatch) -> None:
    """The cumulative-sum search over the top levels picks the same leaves as a level-by-level
    descent from the root, zero leaves included (never picked)."""
    import distdqn.replay.sum_tree as st

    rng = np.random.default_rng(3)
    tree = SumTree(capacity)
    vals = rng.random(capacity) * (rng.random(capacity) < 0.7)
    vals[-1] = 0.5
    tree.update(np.arange(capacity), vals)
    u = np.concatenate([rng.random(20_000) * tree.total(), [0.0, tree.total()]])
    fast = tree.find_prefix_sum(u)
    monkeypatch.setattr(st, "TOP_SEARCH_LEVEL", 0)
    plain = tree.find_prefix_sum(u)
    np.testing.assert_array_equal(fast, plain)
    assert (vals[fast] > 0).all()


def test_sum_tree_errors() -> None:
    tree = SumTree(4)
    with pytest.raises(ValueError, match="total"):
        tree.find_prefix_sum(np.array([0.0]))
    with pytest.raises(ValueError, match="finite"):
        tree.update(np.array([0]), np.array([np.nan]))
    with pytest.raises(ValueError, match="out of range"):
        tree.update(np.array([4]), np.array([1.0]))
    with pytest.raises(ValueError):
        SumTree(0)


# ----------------------------------------------------------------------------- storage


def test_ring_storage_wraps_with_global_keys() -> None:
    st = RingStorage(5, (4,), np.float32)
    np.testing.assert_array_equal(st.add(make_chunk(0, 3)), [0, 1, 2])
    np.testing.assert_array_equal(st.add(make_chunk(3, 4)), [3, 4, 5, 6])  # wraps: slots 3,4,0,1
    assert len(st) == 5 and st.inserted == 7
    np.testing.assert_array_equal(st.obs[:, 0], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(st.action, [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(st.is_live(np.array([0, 1, 2, 6, 7])), [False, False, True, True, False])
    np.testing.assert_array_equal(st.keys_of(np.arange(5)), [5, 6, 2, 3, 4])
    got = st.get(np.array([1, 3]))
    np.testing.assert_array_equal(got["next_obs"][:, 0], [7, 4])
    assert got["action"].dtype == np.int64 and got["reward"].dtype == np.float32

    # A chunk longer than the capacity keeps only its last `capacity` transitions.
    keys = st.add(make_chunk(7, 12))
    np.testing.assert_array_equal(keys, np.arange(7, 19))
    assert st.inserted == 19
    np.testing.assert_array_equal(np.sort(st.obs[:, 0]), [14, 15, 16, 17, 18])
    np.testing.assert_array_equal(st.obs[st.keys_of(np.arange(5)) % 5, 0], st.keys_of(np.arange(5)))


def test_ring_storage_rejects_wrong_obs_shape() -> None:
    st = RingStorage(5, (3,), np.float32)
    with pytest.raises(ValueError, match="observation shape"):
        st.add(make_chunk(0, 2, obs_dim=4))


def test_ring_storage_state_dict_weights_only_roundtrip() -> None:
    st = RingStorage(8, (4,), np.uint8)
    st.add(make_chunk(0, 5))
    buf = io.BytesIO()
    torch.save(st.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["obs"].shape == (5, 4)  # only the filled part
    st2 = RingStorage(8, (4,), np.uint8)
    st2.load_state_dict(state)
    assert st2.inserted == 5 and len(st2) == 5
    np.testing.assert_array_equal(st2.obs, st.obs)
    np.testing.assert_array_equal(st2.reward, st.reward)
    with pytest.raises(ValueError, match="capacity"):
        RingStorage(9, (4,), np.uint8).load_state_dict(state)


# ----------------------------------------------------------------------------- prioritized sampling


def test_sampling_frequencies_follow_priority_to_the_alpha() -> None:
    priorities = np.array([0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0])
    eps = 1e-3
    replay = Replay(cfg(priority_exponent=0.5, priority_epsilon=eps), 8, (4,), np.float32, seed=3)
    replay.insert(make_chunk(0, 8, priority=priorities))
    counts = np.zeros(8)
    for _ in range(6250):  # 50,000 draws
        counts += np.bincount(replay.sample(8).keys, minlength=8)
    p = (priorities.astype(np.float32).astype(np.float64) + eps) ** 0.5
    stat = chi_square(counts, p / p.sum())
    assert stat < CHI2_CRIT_P001[7], (stat, counts)
    # The same counts are far from the alpha = 1 distribution: the test has power.
    p1 = priorities + eps
    assert chi_square(counts, p1 / p1.sum()) > 100 * CHI2_CRIT_P001[7]


def test_uniform_sampling_is_uniform_with_unit_weights() -> None:
    replay = Replay(cfg(kind="uniform", capacity=10), 8, (4,), np.float32, seed=0)
    replay.insert(make_chunk(0, 25, priority=np.arange(25.0)))  # priorities ignored
    counts = np.zeros(25, dtype=np.int64)
    for _ in range(2000):
        b = replay.sample(8)
        assert torch.equal(b.weights, torch.ones(8))
        np.testing.assert_array_equal(b.action.numpy(), b.keys)  # contents match the keys
        counts += np.bincount(b.keys, minlength=25)
    assert counts[:15].sum() == 0
    assert chi_square(counts[15:].astype(float), np.full(10, 0.1)) < CHI2_CRIT_P001[9]
    replay.update_priorities(b.keys, np.ones(8))  # no-op, but validates


def test_importance_weights_match_hand_computation_and_beta_anneals() -> None:
    eps = 1e-3
    c = cfg(priority_exponent=1.0, priority_epsilon=eps, importance_sampling_exponent=0.5, beta_anneal_updates=10)
    replay = Replay(c, 4, (4,), np.float32, seed=0)
    replay.insert(make_chunk(0, 4, priority=np.array([1.0, 2.0, 3.0, 4.0]) - eps))
    # p = [1, 2, 3, 4], P = p / 10, N = 4: (N P)^-0.5 = [0.4, 0.8, 1.2, 1.6]^-0.5
    raw_half = np.array([1.5811388, 1.1180340, 0.9128709, 0.7905694])
    assert replay.beta == pytest.approx(0.5)
    b = replay.sample(4)
    want = raw_half[b.keys] / raw_half[b.keys].max()
    np.testing.assert_allclose(b.weights.numpy(), want, rtol=1e-5)
    assert b.weights.dtype == torch.float32
    # Stratified: one draw from each quarter of [0, 10); cumsum = [1, 3, 6, 10].
    assert b.keys[0] in (0, 1) and b.keys[1] in (1, 2) and b.keys[2] in (2, 3) and b.keys[3] == 3

    for k in range(1, 10):
        assert replay.beta == pytest.approx(0.5 + 0.5 * k / 10)
        replay.sample(4)
    assert replay.beta == pytest.approx(1.0)
    b = replay.sample(4)
    raw_one = raw_half**2  # beta = 1: (N P)^-1
    np.testing.assert_allclose(b.weights.numpy(), raw_one[b.keys] / raw_one[b.keys].max(), rtol=1e-5)
    replay.sample(4)
    assert replay.beta == 1.0 and replay.sample_calls == 12 and replay.samples == 48


def test_multi_batch_draw_stratifies_each_batch_over_the_whole_mass() -> None:
    # 12 equal priorities, 3 batches of 4: M = 12 segments of one leaf each; batch j row r
    # takes segment j + 3r, so it holds exactly leaves j, j + 3, j + 6, j + 9.
    replay = Replay(cfg(priority_exponent=1.0, capacity=16), 4, (4,), np.float32, seed=0)
    replay.insert(make_chunk(0, 12, priority=np.ones(12)))
    b = replay.sample(4, num_batches=3)
    assert b.obs.shape == (12, 4) and b.keys.shape == (12,)
    parts = b.split(3)
    for j, part in enumerate(parts):
        np.testing.assert_array_equal(part.keys, [j, j + 3, j + 6, j + 9])
        np.testing.assert_array_equal(part.action.numpy(), part.keys)  # rows stay with their keys
    assert replay.sample_calls == 3 and replay.samples == 12  # beta anneals per batch
    # Weights are normalized per batch: each batch's largest weight is 1.
    replay.update_priorities(np.arange(12), np.arange(1.0, 13.0))
    for part in replay.sample(4, num_batches=3).split(3):
        assert part.weights.max().item() == 1.0
    # The marginal over all rows is still proportional to priority (chi-square).
    priorities = np.array([0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0])
    replay = Replay(cfg(priority_exponent=1.0, priority_epsilon=1e-3), 8, (4,), np.float32, seed=5)
    replay.insert(make_chunk(0, 8, priority=priorities))
    counts = np.zeros(8)
    for _ in range(1250):  # 40,000 draws
        counts += np.bincount(replay.sample(8, num_batches=4).keys, minlength=8)
    p = priorities.astype(np.float32).astype(np.float64) + 1e-3
    assert chi_square(counts, p / p.sum()) < CHI2_CRIT_P001[7]


def test_multi_batch_draw_errors() -> None:
    a = Replay(cfg(capacity=64), 8, (4,), np.float32, seed=9)
    a.insert(make_chunk(0, 40, priority=np.linspace(0.1, 4.0, 40)))
    x = a.sample(8)
    assert x.split(1) == [x]
    with pytest.raises(ValueError, match="num_batches"):
        a.sample(8, num_batches=0)
    with pytest.raises(ValueError, match="split"):
        x.split(3)


def test_initial_priority_max_vs_actor() -> None:
    eps, alpha = 1e-3, 0.6
    for mode in ("max", "actor"):
        replay = Replay(cfg(initial_priority=mode, priority_exponent=alpha, priority_epsilon=eps), 2, (4,),
                        np.float32, seed=0)
        keys = replay.insert(make_chunk(0, 2, priority=np.array([0.5, 0.25])))
        leaves = replay.tree[keys]
        if mode == "actor":
            np.testing.assert_allclose(leaves, (np.array([0.5, 0.25]) + eps) ** alpha, rtol=1e-6)
        else:
            np.testing.assert_array_equal(leaves, [1.0, 1.0])  # max priority starts at 1
        replay.update_priorities(keys, np.array([9.0, 0.0]))
        assert replay.max_priority == pytest.approx((9.0 + eps) ** alpha)
        new = replay.insert(make_chunk(2, 1, priority=np.array([0.1])))
        want = (0.1 + eps) ** alpha if mode == "actor" else (9.0 + eps) ** alpha
        assert replay.tree[new][0] == pytest.approx(want, rel=1e-6)
        # Without actor priorities, "actor" mode falls back to the max priority too.
        new = replay.insert(make_chunk(3, 1))
        assert replay.tree[new][0] == pytest.approx((9.0 + eps) ** alpha)


def test_wraparound_overwrites_oldest_and_ignores_stale_keys() -> None:
    replay = Replay(cfg(capacity=5, priority_exponent=1.0), 2, (4,), np.float32, seed=0)
    old = replay.insert(make_chunk(0, 4, priority=np.ones(4)))
    replay.insert(make_chunk(4, 4, priority=np.full(4, 2.0)))  # keys 4..7; keys 0..2 overwritten
    assert len(replay) == 5 and replay.inserted == 8
    np.testing.assert_array_equal(replay.storage.is_live(old), [False, False, False, True])
    before = replay.tree[np.arange(5)].copy()
    replay.update_priorities(old[:3], np.array([100.0, 100.0, 100.0]))  # stale: ignored
    np.testing.assert_array_equal(replay.tree[np.arange(5)], before)
    assert replay.max_priority < 100.0
    replay.update_priorities(old[3:], np.array([100.0]))  # key 3 is still live (slot 3)
    assert replay.tree[np.array([3])][0] == pytest.approx(100.001)
    for _ in range(50):
        b = replay.sample(2)
        assert (b.keys >= 3).all() and (b.keys <= 7).all()
        np.testing.assert_array_equal(b.obs[:, 0].numpy(), b.keys)
    with pytest.raises(ValueError, match="issued"):
        replay.update_priorities(np.array([8]), np.array([1.0]))


def test_replay_errors() -> None:
    replay = Replay(cfg(), 4, (4,), np.float32, seed=0)
    replay.insert(make_chunk(0, 3))
    with pytest.raises(ValueError, match="holds only 3"):
        replay.sample(4)
    keys = replay.sample(2).keys
    with pytest.raises(ValueError, match="NaN or inf"):
        replay.update_priorities(keys, np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="NaN or inf"):
        replay.insert(make_chunk(3, 1, priority=np.array([np.inf])))
    with pytest.raises(ValueError, match="2 keys but 3"):
        replay.update_priorities(keys, np.ones(3))


# ----------------------------------------------------------------------------- rate limiter


def test_rate_limiter_min_size_and_ratio_bounds() -> None:
    rl = RateLimiter(samples_per_insert=2.0, min_size_to_sample=10, error_buffer=8.0, batch_size=4)
    assert rl.can_insert(1000, size=0)  # filling up: never blocked
    assert not rl.can_sample(4, size=9)
    rl.on_insert(10)
    assert rl.diff == 20 and rl.min_diff == 12 and rl.max_diff == 28
    assert rl.can_sample(4, size=10)  # sampling starts as soon as min size is reached
    assert rl.can_insert(4, size=10) and not rl.can_insert(5, size=10)  # too far ahead
    rl.on_sample(4)
    rl.on_sample(4)
    assert rl.diff == 12
    assert not rl.can_sample(4, size=10)  # learner ahead of the actors
    assert rl.can_sample(0, size=10)
    rl.on_insert(2)
    assert rl.can_sample(4, size=12)

    off = RateLimiter(samples_per_insert=0.0, min_size_to_sample=10, error_buffer=0.0, batch_size=4)
    off.on_sample(10**6)
    assert off.can_insert(10**6, size=10) and off.can_sample(64, size=10) and not off.can_sample(1, size=9)


def test_rate_limiter_deadlock_check_raises_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        RateLimiter(samples_per_insert=8.0, min_size_to_sample=100, error_buffer=7.9, batch_size=4)
    assert exc.value.key == "replay.error_buffer"
    with pytest.raises(ConfigError) as exc:
        RateLimiter(samples_per_insert=1.0, min_size_to_sample=100, error_buffer=16.0, batch_size=32)
    assert exc.value.key == "replay.error_buffer"
    with pytest.raises(ConfigError) as exc:
        RateLimiter(samples_per_insert=-1.0, min_size_to_sample=100, error_buffer=16.0, batch_size=4)
    assert exc.value.key == "replay.samples_per_insert"
    RateLimiter(samples_per_insert=8.0, min_size_to_sample=100, error_buffer=8.0, batch_size=8)  # ok
    with pytest.raises(ConfigError) as exc:  # the Replay default buffer is checked too
        Replay(cfg(samples_per_insert=4.0, error_buffer=3.0), 2, (4,), np.float32, seed=0)
    assert exc.value.key == "replay.error_buffer"


@pytest.mark.parametrize("spi,chunk,batch,buf", [(4.0, 8, 16, 64.0), (0.5, 16, 32, 32.0), (8.0, 64, 128, 128.0)])
def test_rate_limiter_alternating_loop_keeps_the_ratio(spi: float, chunk: int, batch: int, buf: float) -> None:
    """Random interleaving of an actor (inserts `chunk`) and a learner (samples `batch`).

    The last case (2 * buf < chunk * spi + batch) would deadlock without the limiter's
    deadlock breaker; it must still make progress with a bounded drift.
    """
    rng = np.random.default_rng(0)
    min_size = 100
    rl = RateLimiter(spi, min_size, buf, batch)
    offset = min_size * spi
    size, done_inserts, done_samples = 0, 0, 0
    for _ in range(5000):
        if rng.random() < 0.5:
            if rl.can_insert(chunk, size):
                rl.on_insert(chunk)
                size += chunk
                done_inserts += 1
        elif rl.can_sample(batch, size):
            rl.on_sample(batch)
            done_samples += 1
        if size >= min_size:
            assert rl.min_diff <= rl.diff  # never sampled ahead of the ratio
            assert rl.diff <= max(rl.max_diff + chunk * spi, rl.min_diff + batch + chunk * spi)
    assert done_inserts > 50 and done_samples > 50  # both sides progress, no deadlock
    # samples ~= (inserts - min_size) * spi within the error buffer (+ one chunk of slack)
    drift = rl.samples - (rl.inserts - min_size) * spi
    assert abs(drift) <= buf + chunk * spi + batch
    if 2 * buf >= chunk * spi + batch:
        assert rl.min_diff <= rl.diff <= rl.max_diff
        assert abs(rl.samples - rl.inserts * spi + offset) <= buf


def test_replay_can_insert_and_can_sample_delegate() -> None:
    c = cfg(samples_per_insert=2.0, min_replay_size=8, error_buffer=8.0)
    replay = Replay(c, 4, (4,), np.float32, seed=0)
    assert not replay.can_sample(4)
    replay.insert(make_chunk(0, 8))
    assert replay.can_sample(4) and not replay.can_sample(9)
    assert replay.can_insert(4) and not replay.can_insert(5)
    replay.sample(4)
    replay.sample(4)
    assert not replay.can_sample(4)
    assert replay.samples == 8


# ----------------------------------------------------------------------------- checkpointing


_roundtrip = torch_roundtrip


@pytest.mark.parametrize("kind", ["prioritized", "uniform"])
def test_state_dict_roundtrip_gives_identical_samples(kind: str) -> None:
    c = cfg(kind=kind, capacity=50, samples_per_insert=1.0, min_replay_size=10, error_buffer=64.0)
    rng = np.random.default_rng(5)
    a = Replay(c, 8, (4,), np.float32, seed=11)
    for i in range(8):
        a.insert(make_chunk(10 * i, 10, priority=rng.random(10)))
        b = a.sample(8)
        a.update_priorities(b.keys, rng.random(8) * 3)
    state = _roundtrip(a.state_dict())
    restored = Replay(c, 8, (4,), np.float32, seed=999)
    restored.load_state_dict(state)
    assert restored.inserted == a.inserted and restored.samples == a.samples and restored.beta == a.beta
    assert len(restored) == len(a) == 50
    for i in range(5):
        ba, bb = a.sample(8), restored.sample(8)
        np.testing.assert_array_equal(ba.keys, bb.keys)
        for field in ("obs", "action", "reward", "discount", "next_obs", "weights"):
            assert torch.equal(getattr(ba, field), getattr(bb, field)), field
        td = rng.random(8)
        a.update_priorities(ba.keys, td)
        restored.update_priorities(bb.keys, td)
        chunk = make_chunk(100 + 5 * i, 5, priority=rng.random(5))
        a.insert(chunk)
        restored.insert(chunk)
        assert a.can_sample(8) == restored.can_sample(8) and a.can_insert(5) == restored.can_insert(5)
    with pytest.raises(ValueError, match="checkpoint"):
        Replay(cfg(kind="uniform" if kind == "prioritized" else "prioritized", capacity=50), 8, (4,),
               np.float32, seed=0).load_state_dict(state)


def test_make_replay_builds_both_kinds() -> None:
    assert make_replay(cfg(kind="uniform"), 4, (4,), np.float32, 0).tree is None
    assert isinstance(make_replay(cfg(), 4, (4,), np.float32, 0).tree, SumTree)


def test_nbytes_counts_occupied_slots_and_the_tree():
    cfg = ReplayConfig(capacity=100, min_replay_size=1, samples_per_insert=0)
    r = make_replay(cfg, 8, (4,), np.float32, seed=0)
    tree = r.tree.nbytes
    assert r.nbytes == tree and tree >= 2 * 100 * 8
    r.insert(make_chunk(0, 10))
    per = 2 * 4 * 4 + 8 + 4 + 4  # obs + next_obs float32[4], action int64, reward, discount float32
    assert r.nbytes == tree + 10 * per
    r.insert(make_chunk(10, 200))  # wraps: at most capacity slots
    assert r.nbytes == tree + 100 * per
