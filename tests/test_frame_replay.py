"""Frame-deduplicated replay: compact actor chunks, stacks rebuilt at sample time.

Ground truth: two actors built from the same seed, one sending stacks (``frame_dedup``
off) and one sending frames (on), take identical trajectories; the first one's chunks are
exactly the (obs, next_obs) stacks the actor observed. The env is ``distdqn/StackedFrames-v0``
(84x84 frames encoding (episode tag, step), episodes of 1-12 steps, FrameStackObservation(4)),
so a few hundred steps cross many episode ends and wrap both rings several times.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from _util import torch_roundtrip
import torch

from distdqn.config import ExperimentConfig, ReplayConfig, replace
from distdqn.agents.dqn.spec import transition_chunk as TransitionChunk
from distdqn.core import FrameBlock, finite_mask
from distdqn.program import build_actor, build_replay, frame_dedup_enabled, spaces_for
from _util import dqn_frame_storage
from _util import dqn_replay as Replay
from distdqn.replay import FrameStorage
from distdqn.replay.pools import ReplayPools
from distdqn.testing.envs import frame_info

ENV = "distdqn/StackedFrames-v0"


@pytest.fixture(autouse=True)
def one_torch_thread():
    # Tiny forward passes are much slower with several contending OpenMP threads.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def exp_cfg(**changes) -> ExperimentConfig:
    base = {"env.id": ENV, "env.envs_per_actor": 3, "actor.chunk_size": 16, "actor.n_step": 3,
            "learner.device": "cpu", "learner.batch_size": 32, "replay.capacity": 150,
            "replay.min_replay_size": 32, "replay.samples_per_insert": 0.0, "actor.epsilon_start": 0.5,
            # a small MLP keeps the actors' forward passes cheap; the network is not under test
            "network.kind": "mlp", "network.hidden_sizes": [16]}
    base.update(changes)
    return replace(ExperimentConfig(), **base)


def replay_cfg(kind: str, capacity: int = 150) -> ReplayConfig:
    return ReplayConfig(kind=kind, capacity=capacity, min_replay_size=1, samples_per_insert=0.0,
                        initial_priority="actor", frame_dedup="on")


class Twins:
    """Actor ``actor_id`` twice from one seed: one sends stacks, one sends frames."""

    def __init__(self, cfg: ExperimentConfig, actor_id: int = 0, generation: int = 0):
        spaces = spaces_for(cfg)
        self.stacked = build_actor(replace(cfg, **{"replay.frame_dedup": "off"}), spaces, actor_id, generation)
        self.compact = build_actor(replace(cfg, **{"replay.frame_dedup": "on"}), spaces, actor_id, generation)
        assert not self.stacked.frame_dedup and self.compact.frame_dedup

    def step(self) -> tuple[TransitionChunk, TransitionChunk] | None:
        a, b = self.stacked.step(), self.compact.step()
        assert (a is None) == (b is None)
        if a is None:
            return None
        assert b.compact and b.obs is None and b.next_obs is None and not a.compact
        for f in ("action", "reward", "discount", "priority"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
        return a, b

    def close(self) -> None:
        self.stacked.close()
        self.compact.close()


class Recorder:
    """What each replay key must hold: the stacks the actor observed."""

    def __init__(self):
        self.expected: dict[int, tuple[np.ndarray, ...]] = {}

    def insert(self, replay, pair: tuple[TransitionChunk, TransitionChunk]) -> np.ndarray:
        full, compact = pair
        keys = replay.insert(compact)
        for i, k in enumerate(keys.tolist()):
            self.expected[k] = (full.obs[i], full.next_obs[i], full.action[i], full.reward[i], full.discount[i])
        return keys

    def check(self, replay, batch) -> None:
        keys = batch.keys.tolist()
        assert replay.storage.is_live(batch.keys).all()
        exp = [self.expected[k] for k in keys]
        np.testing.assert_array_equal(batch.obs.numpy(), np.stack([e[0] for e in exp]))
        np.testing.assert_array_equal(batch.next_obs.numpy(), np.stack([e[1] for e in exp]))
        np.testing.assert_array_equal(batch.action.numpy(), np.array([e[2] for e in exp]))
        np.testing.assert_array_equal(batch.reward.numpy(), np.array([e[3] for e in exp]))
        np.testing.assert_array_equal(batch.discount.numpy(), np.array([e[4] for e in exp]))
        for stacks in (batch.obs.numpy(), batch.next_obs.numpy()):
            assert_one_episode(stacks)


def assert_one_episode(stacks: np.ndarray) -> None:
    """Every frame of each stack is from the newest frame's episode, in step order, and
    any padding repeats the episode's first frame (FrameStackObservation 'reset')."""
    for s in stacks:
        info = [frame_info(f) for f in s]
        tag = info[-1][0]
        assert all(t == tag for t, _ in info), info
        steps = [st for _, st in info]
        assert steps == sorted(steps), info
        for j in range(len(steps) - 1):
            assert steps[j + 1] == steps[j] + 1 or (steps[j] == steps[j + 1] == 0), info


def run(twins: list[Twins], replay, rec: Recorder, steps: int, batch: int = 32, rng=None) -> int:
    """Step every twin pair ``steps`` times, inserting compact chunks; after every insert,
    sample a batch and check it (prioritized: with random priority updates). Returns batches checked."""
    rng = rng or np.random.default_rng(0)
    checked = 0
    for _ in range(steps):
        for tw in twins:
            pair = tw.step()
            if pair is None:
                continue
            rec.insert(replay, pair)
            if len(replay) >= batch:
                b = replay.sample(batch)
                rec.check(replay, b)
                replay.update_priorities(b.keys, rng.exponential(1.0, batch))
                checked += 1
    return checked


# ----------------------------------------------------------------------------- the actor's chunks


def test_frame_dedup_auto_resolution() -> None:
    spaces = spaces_for(exp_cfg())
    assert frame_dedup_enabled(exp_cfg(), spaces)
    assert not frame_dedup_enabled(exp_cfg(**{"replay.frame_dedup": "off"}), spaces)
    assert not frame_dedup_enabled(exp_cfg(**{"env.frame_stack": 2}), spaces)  # not what the env stacks
    cart = replace(ExperimentConfig(), **{"env.id": "CartPole-v1"})
    assert not frame_dedup_enabled(cart, spaces_for(cart))
    assert isinstance(build_replay(exp_cfg(), spaces).storage, FrameStorage)
    assert isinstance(build_replay(exp_cfg(**{"replay.placement": "per_actor"}), spaces), ReplayPools)


def test_compact_chunk_is_about_an_eighth_of_stacks() -> None:
    tw = Twins(exp_cfg())
    try:
        pairs = [p for p in (tw.step() for _ in range(60)) if p is not None]
    finally:
        tw.close()
    full = sum(p[0].nbytes() for p in pairs)
    compact = sum(p[1].nbytes() for p in pairs)
    pickled = sum(len(pickle.dumps(p[1])) for p in pairs) / sum(len(pickle.dumps(p[0])) for p in pairs)
    # 1 frame per env step (+ reset frames) instead of 2 x 4 frames per transition
    assert compact / full <= 0.25 and pickled <= 0.25, (compact / full, pickled)
    frames = sum(len(p[1].frames) for p in pairs)
    steps = sum(p[1].env_steps for p in pairs)
    assert steps <= frames <= 2 * steps
    # frames are numbered consecutively across chunks, each chunk continuing the last
    starts = [p[1].frames.start for p in pairs]
    ends = [p[1].frames.start + len(p[1].frames) for p in pairs]
    assert starts[0] == 0 and starts[1:] == ends[:-1]
    assert len(pairs[0][1].frames) >= 3  # the 3 reset frames travel in the first chunk


@pytest.mark.parametrize("kind", ["uniform", "prioritized"])
@pytest.mark.parametrize("frame_capacity", [400, 90])
def test_sampled_stacks_equal_observed_stacks(kind: str, frame_capacity: int) -> None:
    """Two actors (two streams), many episode ends, both rings wrapping; with 400 frame slots
    for 150 transitions none dies early, with 90 transitions die because their frames are
    overwritten."""
    cfg = exp_cfg(**{"actor.num_actors": 2})
    spaces = spaces_for(cfg)
    replay = Replay(replay_cfg(kind), 32, spaces.obs_shape, spaces.obs_dtype, seed=1, frame_capacity=frame_capacity)
    twins = [Twins(cfg, 0), Twins(cfg, 1)]
    rec = Recorder()
    try:
        checked = run(twins, replay, rec, 140)
    finally:
        for tw in twins:
            tw.close()
    st = replay.storage
    assert checked > 30
    assert replay.inserted > 4 * st.capacity and st.frames_written > 2 * st.frame_capacity
    assert st.filled == st.capacity
    if frame_capacity < st.capacity:
        # about 90 frames' worth of transitions survive out of 150 slots
        assert 0 < len(replay) < st.filled
        slots = np.arange(st.filled)
        dead = slots[~st.alive]
        assert dead.size == st.filled - len(replay)
        assert not st.is_live(st.keys_of(dead)).any()
        if replay.tree is not None:
            assert np.all(replay.tree[dead] == 0.0) and np.all(replay.tree[slots[st.alive]] > 0.0)
            # a late priority update for a dead transition does not bring it back
            replay.update_priorities(st.keys_of(dead), np.full(dead.size, 5.0))
            assert np.all(replay.tree[dead] == 0.0)
        # every alive transition's frames are all still in the ring
        lo = st.frames_written - st.frame_capacity
        assert np.all(st.oldest[st.alive] >= lo)
    else:
        assert len(replay) == st.filled
    # a few final batches as large as the replay, every stack checked again
    for _ in range(3):
        rec.check(replay, replay.sample(len(replay)))


def test_stacked_chunks_into_frame_replay() -> None:
    """Ordinary stacked chunks (e.g. benchmarks' random fills) are stored and rebuilt exactly."""
    spaces = spaces_for(exp_cfg())
    replay = Replay(replay_cfg("prioritized", 40), 8, spaces.obs_shape, spaces.obs_dtype, seed=0,
                    frame_capacity=500)
    rng = np.random.default_rng(3)
    expected = {}
    for _ in range(8):
        t = 7
        obs = rng.integers(0, 256, (t, *spaces.obs_shape), dtype=np.uint8)
        nxt = rng.integers(0, 256, (t, *spaces.obs_shape), dtype=np.uint8)
        keys = replay.insert(TransitionChunk(obs, np.arange(t), np.ones(t, np.float32), np.ones(t, np.float32), nxt,
                                             priority=np.ones(t, np.float32)))
        expected.update({k: (obs[i], nxt[i]) for i, k in enumerate(keys.tolist())})
        b = replay.sample(len(replay))
        np.testing.assert_array_equal(b.obs.numpy(), np.stack([expected[k][0] for k in b.keys.tolist()]))
        np.testing.assert_array_equal(b.next_obs.numpy(), np.stack([expected[k][1] for k in b.keys.tolist()]))
    # 8 frames per transition, 500 frame slots: only the newest ~60 transitions can be alive
    assert 0 < len(replay) <= 500 // 8


def test_restarted_actor_is_a_new_stream() -> None:
    """An actor instance whose stream id equals an earlier instance's (as if restarted with
    the same seed) restarts its frame ids at 0: the replay must not resolve them against
    the earlier instance's frames. (The second instance has another seed, so its frames
    differ, and its stream id is forced to the first one's.)"""
    cfg = exp_cfg()
    spaces = spaces_for(cfg)
    replay = Replay(replay_cfg("uniform", 400), 32, spaces.obs_shape, spaces.obs_dtype, seed=2)
    rec = Recorder()
    first = Twins(cfg, 0)
    try:
        run([first], replay, rec, 40)
    finally:
        first.close()
    split = replay.inserted
    again = Twins(cfg, 0, generation=1)
    again.compact.frame_stream = first.compact.frame_stream
    try:
        run([again], replay, rec, 60)
    finally:
        again.close()
    assert split < replay.inserted <= 400  # both instances' transitions are held
    b = replay.sample(len(replay))
    assert (b.keys < split).any() and (b.keys >= split).any()
    rec.check(replay, b)


def test_pools_with_frame_dedup() -> None:
    cfg = exp_cfg(**{"actor.num_actors": 2, "replay.placement": "per_actor", "replay.capacity": 200})
    spaces = spaces_for(cfg)
    pools = build_replay(cfg, spaces)
    assert all(isinstance(p.storage, FrameStorage) for p in pools.pools)
    rec_by_pool = [Recorder(), Recorder()]
    twins = [Twins(cfg, 0), Twins(cfg, 1)]
    try:
        for _ in range(60):
            for i, tw in enumerate(twins):
                pair = tw.step()
                if pair is not None:
                    rec_by_pool[i].insert(pools.pools[i], pair)
    finally:
        for tw in twins:
            tw.close()
    b = pools.sample(64)
    pool_of = b.keys >> 48
    for p in (0, 1):
        m = pool_of == p
        local = b.keys[m] & ((1 << 48) - 1)
        exp = [rec_by_pool[p].expected[k] for k in local.tolist()]
        np.testing.assert_array_equal(b.obs.numpy()[m], np.stack([e[0] for e in exp]))
        np.testing.assert_array_equal(b.next_obs.numpy()[m], np.stack([e[1] for e in exp]))


def _compact(stream: int, start: int, prev: list[int], obs: list[int], nxt: list[int],
             value0: int = 0) -> TransitionChunk:
    """A hand-made compact chunk of 2x2 frames whose pixels all equal ``value0 + actor id + 1``."""
    m, t = len(prev), len(obs)
    frames = (value0 + np.arange(start, start + m, dtype=np.uint8) + 1)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    return TransitionChunk(obs=None, action=np.arange(t), reward=np.zeros(t, np.float32),
                           discount=np.ones(t, np.float32), next_obs=None,
                           frames=FrameBlock(frames=frames, prev=np.array(prev, np.int64), start=start, stream=stream),
                           obs_frame=np.array(obs, np.int64), next_frame=np.array(nxt, np.int64))


def test_hand_made_chunks_padding_gaps_and_overwritten_frames() -> None:
    st = dqn_frame_storage(capacity=20, obs_shape=(3, 2, 2), obs_dtype=np.uint8, frame_capacity=12)

    def px(stacks: np.ndarray) -> list[list[int]]:
        return stacks[:, :, 0, 0].tolist()

    # stream 7: episode A = ids 0, 1, 2; episode B starts at 3
    st.add(_compact(7, 0, prev=[0, 0, 1, 3], obs=[0, 1], nxt=[1, 2]))
    got = st.get(np.array([0, 1]))
    assert px(got["obs"]) == [[1, 1, 1], [1, 1, 2]] and px(got["next_obs"]) == [[1, 1, 2], [1, 2, 3]]
    # next chunk refers back to frames of the first one; episode B's padding is its first frame
    st.add(_compact(7, 4, prev=[3, 4], obs=[2, 3, 4], nxt=[2, 4, 5]))
    got = st.get(np.array([2, 3, 4]))
    assert px(got["obs"]) == [[1, 2, 3], [4, 4, 4], [4, 4, 5]]
    assert px(got["next_obs"]) == [[1, 2, 3], [4, 4, 5], [4, 5, 6]]
    assert len(st) == 5
    # a gap (ids 6..9 never arrived): references into it, or links through it, are dead
    keys = st.add(_compact(7, 10, prev=[9, 10], obs=[5, 8, 10, 11], nxt=[6, 9, 11, 11]))
    assert st.alive[keys % 20].tolist() == [False, False, False, False]
    assert sorted(st.take_killed().tolist()) == (keys % 20).tolist()
    # another stream overwrites frames 0..(cutoff): stream 7's old frames can no longer be used
    st.add(_compact(8, 0, prev=list(range(10)), obs=[0], nxt=[0], value0=100))  # 10 episode starts
    assert st.frames_written == 18 and len(st) <= 5
    keys = st.add(_compact(7, 12, prev=[11], obs=[4, 12], nxt=[5, 12]))
    assert not st.alive[keys % 20].any()  # frame 4 (and links to 11) are gone or unknown
    # every alive transition still rebuilds from frames in the ring
    alive = np.flatnonzero(st.alive[: st.filled])
    assert np.all(st.oldest[alive] >= st.frames_written - st.frame_capacity)


# ----------------------------------------------------------------------------- checkpoints, NaN checks


_roundtrip = torch_roundtrip


@pytest.mark.parametrize("kind", ["uniform", "prioritized"])
def test_replay_state_dict_round_trip(kind: str) -> None:
    cfg = exp_cfg()
    spaces = spaces_for(cfg)
    a = Replay(replay_cfg(kind), 32, spaces.obs_shape, spaces.obs_dtype, seed=5, frame_capacity=120)
    tw = Twins(cfg, 0)
    rec = Recorder()
    try:
        run([tw], a, rec, 70)
        b = Replay(replay_cfg(kind), 32, spaces.obs_shape, spaces.obs_dtype, seed=77, frame_capacity=120)
        b.load_state_dict(_roundtrip(a.state_dict()))
        assert len(b) == len(a) and b.inserted == a.inserted
        assert b.storage.frames_written == a.storage.frames_written
        # both go on identically, including resolving frames sent before the checkpoint
        for _ in range(25):
            pair = tw.step()
            if pair is not None:
                rec.insert(a, pair)
                b.insert(pair[1])
            x, y = a.sample(32), b.sample(32)
            np.testing.assert_array_equal(x.keys, y.keys)
            assert torch.equal(x.obs, y.obs) and torch.equal(x.next_obs, y.next_obs)
            assert torch.equal(x.weights, y.weights)
            rec.check(b, y)
            td = np.random.default_rng(len(a)).exponential(1.0, 32)
            a.update_priorities(x.keys, td)
            b.update_priorities(y.keys, td)
    finally:
        tw.close()
    stacked = Replay(ReplayConfig(kind=kind, capacity=150), 32, spaces.obs_shape, spaces.obs_dtype, seed=0)
    with pytest.raises(ValueError, match="deduplicates frames"):
        stacked.load_state_dict(_roundtrip(a.state_dict()))


def test_actor_state_dict_restores_frame_numbering() -> None:
    cfg = exp_cfg(**{"replay.frame_dedup": "on"})
    spaces = spaces_for(cfg)
    a1 = build_actor(cfg, spaces, 0)
    a2 = None
    try:
        for _ in range(37):
            a1.step()
        assert a1.frames._frames  # frames observed but not yet sent
        state = _roundtrip(a1.state_dict())
        a2 = build_actor(cfg, spaces, 0, generation=1)
        a2.load_state_dict(state)
        assert a2.frame_stream == a1.frame_stream
        c1 = [c for c in (a1.step() for _ in range(40)) if c is not None]
        c2 = [c for c in (a2.step() for _ in range(40)) if c is not None]
        assert len(c1) == len(c2) >= 5
        for x, y in zip(c1, c2):
            for f in ("action", "reward", "discount", "priority", "obs_frame", "next_frame"):
                np.testing.assert_array_equal(getattr(x, f), getattr(y, f), err_msg=f)
            np.testing.assert_array_equal(x.frames.frames, y.frames.frames)
            np.testing.assert_array_equal(x.frames.prev, y.frames.prev)
            assert (x.frames.start, x.frames.stream) == (y.frames.start, y.frames.stream)
    finally:
        a1.close()
        if a2 is not None:
            a2.close()


def test_finite_mask_and_select_on_compact_chunks() -> None:
    tw = Twins(exp_cfg())
    try:
        pair = None
        while pair is None:
            pair = tw.step()
    finally:
        tw.close()
    c = pair[1]
    assert finite_mask(c).all()
    c.reward = c.reward.copy()
    c.reward[1] = np.nan
    c.priority = c.priority.copy()
    c.priority[2] = np.inf
    ok = finite_mask(c)
    assert ok.tolist() == [i not in (1, 2) for i in range(len(c))]
    kept = c.select(ok)
    assert len(kept) == len(c) - 2 and kept.frames is c.frames
    np.testing.assert_array_equal(kept.obs_frame, c.obs_frame[ok])
    spaces = spaces_for(exp_cfg())
    stacked = Replay(ReplayConfig(kind="uniform", capacity=150), 32, spaces.obs_shape, spaces.obs_dtype, seed=0)
    with pytest.raises(ValueError, match="compact"):
        stacked.insert(kept)


# ----------------------------------------------------------------------------- end to end


def test_serial_run_with_frame_dedup_resumes_exactly(tmp_path: Path) -> None:
    from distdqn.io.checkpoint import complete_checkpoints, load_checkpoint
    from distdqn.runtime.serial import run_serial

    def cfg(steps: int) -> ExperimentConfig:
        return exp_cfg(**{"runtime": "serial", "total_env_steps": steps, "checkpoint_replay": True,
                          "checkpoint_period": 0, "progress": False, "eval.eval_period": 0,
                          "eval.eval_episodes": 1, "eval.target_return": None, "replay.capacity": 200,
                          "replay.min_replay_size": 64, "env.envs_per_actor": 2})

    def params(run_dir: Path) -> torch.Tensor:
        return load_checkpoint(complete_checkpoints(run_dir)[0])["params"]

    spaces = spaces_for(cfg(300))
    (tmp_path / "full").mkdir()
    (tmp_path / "part").mkdir()
    s_full = run_serial(cfg(300), spaces, tmp_path / "full")
    run_serial(cfg(150), spaces, tmp_path / "part")
    s_res = run_serial(cfg(300), spaces, tmp_path / "part", resume=True)
    assert s_full["accounting_ok"] and s_res["accounting_ok"]
    assert s_full["updates"] == s_res["updates"] > 0
    assert torch.equal(params(tmp_path / "full"), params(tmp_path / "part"))
