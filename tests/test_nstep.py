"""Tests of distdqn.nstep.NStepAccumulator.

Every expected value is computed by hand (small cases) or by a brute-force reference
built from the known episode sequences of ``distdqn/Chain-v0`` (obs = steps taken in
the episode, reward of step k = k + 1), independent of the accumulator's ring logic.
"""

from __future__ import annotations

import io

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import distdqn.testing.envs  # noqa: F401  (registers distdqn/Chain-v0)
from distdqn.config import EnvConfig
from distdqn.envs import make_vector_env
from distdqn.agents.dqn.nstep import NStepAccumulator

G = 0.9


def o(*vals: float) -> np.ndarray:
    """A ``[E, 1]`` float32 observation batch."""
    return np.array(vals, dtype=np.float32).reshape(-1, 1)


def b(*vals: bool) -> np.ndarray:
    return np.array(vals, dtype=bool)


def acc1(n: int = 3, gamma: float = G, **kw) -> NStepAccumulator:
    return NStepAccumulator(1, n, gamma, (1,), np.float32, **kw)


def step1(acc: NStepAccumulator, s: float, a: int, r: float, s2: float, term: bool = False, trunc: bool = False,
          **kw) -> None:
    acc.add(o(s), np.array([a]), np.array([r]), o(s2), b(term), b(trunc), **kw)


def as_rows(cols) -> list[tuple[float, int, float, float, float]]:
    """Emitted columns as rows ``(obs, action, R, discount, next_obs)`` sorted by (obs, next_obs, action)."""
    if cols is None:
        return []
    obs, act, rew, disc, nxt = cols
    rows = [(float(obs[i, 0]), int(act[i]), float(rew[i]), float(disc[i]), float(nxt[i, 0])) for i in range(len(act))]
    return sorted(rows, key=lambda r: (r[0], r[4], r[1], round(r[3], 5), round(r[2], 3)))


def assert_rows_equal(got, want) -> None:
    assert len(got) == len(want), (len(got), len(want))
    for g, w in zip(got, want):
        assert g[0] == w[0] and g[4] == w[4] and g[1] == w[1], (g, w)
        assert g[3] == pytest.approx(w[3], rel=1e-6, abs=1e-7), (g, w)
        assert g[2] == pytest.approx(w[2], rel=1e-5), (g, w)


# ----------------------------------------------------------------------------- hand-computed cases


def test_rejects_n_step_zero() -> None:
    with pytest.raises(ValueError, match="n_step"):
        NStepAccumulator(1, 0, G, (1,), np.float32)


def test_no_termination_first_and_second_transition() -> None:
    acc = acc1()
    assert acc.pop() is None
    step1(acc, 0, 1, 1.0, 1)
    step1(acc, 1, 0, 2.0, 2)
    assert len(acc) == 0 and acc.pop() is None
    step1(acc, 2, 1, 3.0, 3)
    assert len(acc) == 1
    obs, act, rew, disc, nxt = acc.pop()
    assert len(acc) == 0
    assert obs.shape == (1, 1) and obs.dtype == np.float32 and nxt.dtype == np.float32
    assert rew.dtype == np.float32 and disc.dtype == np.float32 and act.dtype == np.int64
    assert obs[0, 0] == 0.0 and nxt[0, 0] == 3.0 and act[0] == 1
    assert rew[0] == pytest.approx(1 + 0.9 * 2 + 0.81 * 3)  # 5.23
    assert rew[0] == pytest.approx(5.23)
    assert disc[0] == pytest.approx(0.9**3)  # 0.729
    step1(acc, 3, 0, 4.0, 4)
    obs, act, rew, disc, nxt = acc.pop()
    assert obs[0, 0] == 1.0 and nxt[0, 0] == 4.0 and act[0] == 0
    assert rew[0] == pytest.approx(2 + 0.9 * 3 + 0.81 * 4)  # 7.94
    assert disc[0] == pytest.approx(0.729)


def test_termination_inside_window_length_2() -> None:
    acc = acc1()
    step1(acc, 0, 1, 1.0, 1)
    step1(acc, 1, 0, 2.0, 2, term=True)
    assert len(acc) == 2
    # (obs, action, R, discount, next_obs)
    assert_rows_equal(as_rows(acc.pop()), [(0, 1, 1 + 0.9 * 2, 0.0, 2), (1, 0, 2.0, 0.0, 2)])


def test_truncation_inside_window_length_2_bootstraps() -> None:
    acc = acc1()
    step1(acc, 0, 1, 1.0, 1)
    step1(acc, 1, 0, 2.0, 2, trunc=True)
    assert_rows_equal(as_rows(acc.pop()), [(0, 1, 2.8, 0.81, 2), (1, 0, 2.0, 0.9, 2)])


def test_terminated_and_truncated_together_means_no_bootstrap() -> None:
    acc = acc1()
    step1(acc, 0, 0, 1.0, 1)
    step1(acc, 1, 0, 2.0, 2, term=True, trunc=True)
    assert_rows_equal(as_rows(acc.pop()), [(0, 0, 2.8, 0.0, 2), (1, 0, 2.0, 0.0, 2)])


def test_termination_exactly_at_n() -> None:
    acc = acc1()
    step1(acc, 0, 0, 1.0, 1)
    step1(acc, 1, 1, 2.0, 2)
    step1(acc, 2, 0, 3.0, 3, term=True)
    assert_rows_equal(
        as_rows(acc.pop()),
        [(0, 0, 1 + 1.8 + 2.43, 0.0, 3), (1, 1, 2 + 2.7, 0.0, 3), (2, 0, 3.0, 0.0, 3)],
    )


@pytest.mark.parametrize("terminated", [True, False])
def test_episode_of_length_5_with_n_3(terminated: bool) -> None:
    acc = acc1()
    emitted = []
    for t in range(5):
        last = t == 4
        step1(acc, t, t % 2, t + 1.0, t + 1, term=last and terminated, trunc=last and not terminated)
        emitted.append(len(acc))
    # nothing until the first window is full, one per step, then the tail of 3 at the end
    assert emitted == [0, 0, 1, 2, 5]
    end_disc = [0.0, 0.0, 0.0] if terminated else [0.729, 0.81, 0.9]
    want = [
        (0, 0, 1 + 0.9 * 2 + 0.81 * 3, 0.729, 3),  # 5.23
        (1, 1, 2 + 0.9 * 3 + 0.81 * 4, 0.729, 4),  # 7.94
        (2, 0, 3 + 0.9 * 4 + 0.81 * 5, end_disc[0], 5),  # 10.65
        (3, 1, 4 + 0.9 * 5, end_disc[1], 5),  # 8.5
        (4, 0, 5.0, end_disc[2], 5),
    ]
    assert_rows_equal(as_rows(acc.pop()), want)


def test_n_equals_one() -> None:
    acc = acc1(n=1, gamma=0.5)
    step1(acc, 0, 1, 3.0, 1)
    step1(acc, 1, 0, -2.0, 2, term=True)
    step1(acc, 0, 1, 7.0, 1, trunc=True)
    assert_rows_equal(as_rows(acc.pop()), [(0, 1, 3.0, 0.5, 1), (0, 1, 7.0, 0.5, 1), (1, 0, -2.0, 0.0, 2)])


def test_new_episode_after_end_does_not_mix() -> None:
    """Single env, episodes of length 2 then 4, obs encode (episode*10 + step)."""
    acc = acc1()
    step1(acc, 0, 0, 1.0, 1)
    step1(acc, 1, 1, 2.0, 2, term=True)
    for t in range(4):
        step1(acc, 10 + t, 1, 10.0 * (t + 1), 11 + t, term=t == 3)
    want = [
        (0, 0, 2.8, 0.0, 2), (1, 1, 2.0, 0.0, 2),
        (10, 1, 10 + 0.9 * 20 + 0.81 * 30, 0.729, 13),
        (11, 1, 20 + 0.9 * 30 + 0.81 * 40, 0.0, 14),
        (12, 1, 30 + 0.9 * 40, 0.0, 14),
        (13, 1, 40.0, 0.0, 14),
    ]
    assert_rows_equal(as_rows(acc.pop()), want)


def test_uint8_image_observations_keep_dtype_and_content() -> None:
    acc = NStepAccumulator(2, 2, 0.5, (2, 3), np.uint8)
    frames = [np.full((2, 2, 3), k, dtype=np.uint8) for k in range(4)]
    frames = [f + np.array([0, 100], dtype=np.uint8).reshape(2, 1, 1) for f in frames]  # env 1 offset by 100
    for t in range(3):
        acc.add(frames[t], np.array([t, t]), np.array([1.0, 2.0]), frames[t + 1], b(False, False), b(False, False))
    obs, act, rew, disc, nxt = acc.pop()
    assert obs.dtype == np.uint8 and nxt.dtype == np.uint8 and obs.shape == (4, 2, 3)
    starts = sorted(int(x[0, 0]) for x in obs)
    assert starts == [0, 1, 100, 101]
    for i in range(4):
        assert int(nxt[i, 0, 0]) - int(obs[i, 0, 0]) == 2
        assert np.all(obs[i] == obs[i, 0, 0]) and np.all(nxt[i] == nxt[i, 0, 0])
        assert act[i] == int(obs[i, 0, 0]) % 100
        assert rew[i] == pytest.approx(1.5 if obs[i, 0, 0] < 100 else 3.0)
        assert disc[i] == pytest.approx(0.25)


# ----------------------------------------------------------------------------- reference from Chain episodes


def chain_reference(episodes, n: int, gamma: float):
    """Expected rows for Chain episodes.

    ``episodes``: list of ``(length, steps_done, actions, truncate)``; an episode is complete
    when ``steps_done == length``. Obs at step t is t, reward of step t is t + 1.
    """
    rows = []
    for length, done_steps, actions, truncate in episodes:
        complete = done_steps == length
        for t in range(done_steps):
            m = min(n, length - t)
            if not complete and t + n > done_steps:
                continue  # window still open
            reaches_end = t + m == length
            ret = sum(gamma**k * (t + k + 1) for k in range(m))
            disc = 0.0 if (reaches_end and not truncate) else gamma**m
            rows.append((float(t), int(actions[t]), ret, disc, float(t + m)))
    return sorted(rows, key=lambda r: (r[0], r[4], r[1], round(r[3], 5), round(r[2], 3)))


def chain_vec(lengths, truncates, mode) -> SyncVectorEnv:
    return SyncVectorEnv(
        [lambda L=L, tr=tr: gymnasium.make("distdqn/Chain-v0", length=L, truncate=tr) for L, tr in zip(lengths, truncates)],
        autoreset_mode=mode,
        observation_mode="different",  # Chain's Box high is its length
    )


def check_chain_invariants(cols, n: int, gamma: float, terminal_lengths: set[int]) -> None:
    """Per transition, without knowing its env: next_obs - obs = m with discount gamma^m,
    or the remaining steps of a terminated episode; R is the m-step Chain return."""
    obs, act, rew, disc, nxt = cols
    for i in range(len(act)):
        s, s2 = float(obs[i, 0]), float(nxt[i, 0])
        m = int(round(s2 - s))
        assert 1 <= m <= n, (s, s2)
        assert s2 - s == m
        if disc[i] == 0.0:
            assert int(s2) in terminal_lengths, (s, s2)  # ends on a terminal obs
        else:
            assert disc[i] == pytest.approx(gamma**m, rel=1e-6), (s, s2, disc[i])
        assert rew[i] == pytest.approx(sum(gamma**k * (s + k + 1) for k in range(m)), rel=1e-5)


def run_disabled(lengths, truncates, steps: int, n: int, gamma: float, seed: int = 0, vec=None):
    """Step a DISABLED-autoreset Chain vector env with manual ``reset_mask`` resets.

    Returns (all emitted rows, the reference rows, raw cols, real steps)."""
    env = vec if vec is not None else chain_vec(lengths, truncates, AutoresetMode.DISABLED)
    e = len(lengths)
    rng = np.random.default_rng(seed)
    acc = NStepAccumulator(e, n, gamma, (1,), np.float32)
    obs, _ = env.reset(seed=seed)
    all_cols = []
    # ground truth episodes per env, from the env's known dynamics (not from its outputs)
    cur_actions: list[list[int]] = [[] for _ in range(e)]
    episodes = []
    real = 0
    for _ in range(steps):
        actions = rng.integers(2, size=e)
        nobs, rew, term, trunc, _ = env.step(actions)
        real += e
        acc.add(obs, actions, rew, nobs, term, trunc)
        done = term | trunc
        for i in range(e):
            cur_actions[i].append(int(actions[i]))
            if len(cur_actions[i]) == lengths[i]:
                assert done[i]
                episodes.append((lengths[i], lengths[i], cur_actions[i], truncates[i]))
                cur_actions[i] = []
            else:
                assert not done[i]
        if done.any():
            r_obs, _ = env.reset(seed=[int(s) for s in rng.integers(1000, size=e)], options={"reset_mask": done})
            nobs = np.where(done[:, None], r_obs, nobs)
        obs = nobs
        cols = acc.pop()
        if cols is not None:
            all_cols.append(cols)
    for i in range(e):
        if cur_actions[i]:
            episodes.append((lengths[i], len(cur_actions[i]), cur_actions[i], truncates[i]))
    env.close()
    cols = tuple(np.concatenate(c) for c in zip(*all_cols))
    return as_rows(cols), chain_reference(episodes, n, gamma), cols, real


def test_vector_env_three_subenvs_disabled_matches_reference() -> None:
    lengths, truncates = [2, 3, 7], [False, True, False]
    got, want, cols, _ = run_disabled(lengths, truncates, steps=30, n=3, gamma=G, seed=1)
    check_chain_invariants(cols, 3, G, terminal_lengths={2, 7})
    assert_rows_equal(got, want)


def test_vector_env_make_vector_env_with_time_limit_truncation() -> None:
    """Chain length 5 cut by a TimeLimit of 3: every episode ends *truncated* at obs 3."""
    vec = make_vector_env(EnvConfig(id="distdqn/Chain-v0", max_episode_steps=3), 2)
    got, want, cols, _ = run_disabled([3, 3], [True, True], steps=10, n=2, gamma=0.8, seed=2, vec=vec)
    check_chain_invariants(cols, 2, 0.8, terminal_lengths=set())
    assert np.all(cols[3] > 0)  # truncation always bootstraps
    assert_rows_equal(got, want)


def test_emitted_count_equals_real_steps_after_whole_episodes_disabled() -> None:
    # lengths 2, 3, 4 all end together every 12 steps
    got, want, _, real = run_disabled([2, 3, 4], [False, True, False], steps=24, n=3, gamma=G, seed=3)
    assert len(got) == real == 72
    assert_rows_equal(got, want)


def test_single_env_k_episodes_count() -> None:
    got, want, cols, real = run_disabled([4], [False], steps=20, n=3, gamma=G)  # 5 episodes
    assert len(got) == real == 20
    assert int((cols[3] == 0).sum()) == 5 * 3  # the last 3 windows of each episode hit the terminal
    assert_rows_equal(got, want)


def run_next_step(lengths, truncates, steps: int, n: int, gamma: float, seed: int = 0):
    env = chain_vec(lengths, truncates, AutoresetMode.NEXT_STEP)
    e = len(lengths)
    rng = np.random.default_rng(seed)
    acc = NStepAccumulator(e, n, gamma, (1,), np.float32, autoreset_next_step=True)
    obs, _ = env.reset(seed=seed)
    all_cols = []
    actions_log = []
    for _ in range(steps):
        actions = rng.integers(2, size=e)
        actions_log.append(actions)
        nobs, rew, term, trunc, _ = env.step(actions)
        acc.add(obs, actions, rew, nobs, term, trunc)
        obs = nobs
        cols = acc.pop()
        if cols is not None:
            all_cols.append(cols)
    env.close()
    # Reference from the known schedule: with NEXT_STEP, env i cycles through L_i episode
    # steps then one reset step; vector step s (1-based) is step (s-1) % (L_i+1) of the cycle.
    episodes = []
    real = 0
    for i, L in enumerate(lengths):
        cur: list[int] = []
        for s in range(steps):
            pos = s % (L + 1)
            if pos == L:
                continue  # the reset step: not a transition
            real += 1
            cur.append(int(actions_log[s][i]))
            if len(cur) == L:
                episodes.append((L, L, cur, truncates[i]))
                cur = []
        if cur:
            episodes.append((L, len(cur), cur, truncates[i]))
    cols = tuple(np.concatenate(c) for c in zip(*all_cols))
    return as_rows(cols), chain_reference(episodes, n, gamma), cols, real


def test_next_step_autoreset_matches_reference() -> None:
    got, want, cols, _ = run_next_step([2, 4, 6], [False, True, False], steps=31, n=3, gamma=G, seed=4)
    check_chain_invariants(cols, 3, G, terminal_lengths={2, 6})
    # the reset step would show up as a transition from a final obs (2, 4 or 6) to obs 0
    assert np.all(cols[4][:, 0] > cols[0][:, 0])
    assert_rows_equal(got, want)


def test_next_step_autoreset_count_equals_real_steps() -> None:
    # periods 3, 4, 5: every env ends an episode at vector step 59 (1-based)
    got, want, _, real = run_next_step([2, 3, 4], [True, False, False], steps=59, n=3, gamma=G, seed=5)
    assert real == 40 + 45 + 48
    assert len(got) == real
    assert_rows_equal(got, want)


def test_next_step_explicit_valid_mask_equivalent() -> None:
    """``valid`` passed explicitly gives the same as autoreset_next_step=True."""
    seq = [  # (obs, r, next_obs, term) for one env, NEXT_STEP style: step 3 is the reset step
        (0, 1.0, 1, False), (1, 2.0, 2, True), (2, 0.0, 0, False), (0, 1.0, 1, False), (1, 2.0, 2, True),
    ]
    a1 = acc1(n=2, autoreset_next_step=True)
    a2 = acc1(n=2)
    prev_done = False
    for s, r, s2, d in seq:
        step1(a1, s, 0, r, s2, term=d)
        step1(a2, s, 0, r, s2, term=d, valid=np.array([not prev_done]))
        prev_done = d
    r1, r2 = as_rows(a1.pop()), as_rows(a2.pop())
    assert_rows_equal(r1, r2)
    assert_rows_equal(r1, [(0, 0, 2.8, 0.0, 2), (0, 0, 2.8, 0.0, 2), (1, 0, 2.0, 0.0, 2), (1, 0, 2.0, 0.0, 2)])


# ----------------------------------------------------------------------------- reset & state


def two_env_step(acc, v0: float, v1: float, term=(False, False)) -> None:
    """Env 0 obs [0, v0] -> [0, v0+1]; env 1 obs [1, v1] -> [1, v1+1]; reward = value."""
    obs = np.array([[0, v0], [1, v1]], dtype=np.float32)
    acc.add(obs, np.array([0, 1]), np.array([v0, v1]), obs + np.array([0, 1], dtype=np.float32), b(*term), b(False, False))


def test_reset_mask_drops_open_windows_only_for_masked_envs() -> None:
    acc = NStepAccumulator(2, 3, G, (2,), np.float32)
    two_env_step(acc, 0, 0)
    two_env_step(acc, 1, 1)
    acc.reset(np.array([True, False]))
    for k in range(3):  # env 0 was recreated: its episode restarts at 100
        two_env_step(acc, 100 + k, 2 + k)
    obs, act, rew, disc, nxt = acc.pop()
    got = sorted((float(x[0]), float(x[1]), float(y[1])) for x, y in zip(obs, nxt))
    assert got == [(0, 100, 103), (1, 0, 3), (1, 1, 4), (1, 2, 5)]
    for i in range(len(act)):
        v = obs[i, 1]
        assert rew[i] == pytest.approx(v + 0.9 * (v + 1) + 0.81 * (v + 2))
        assert act[i] == obs[i, 0]


def test_reset_all_then_episode_end_emits_only_new_steps() -> None:
    acc = NStepAccumulator(2, 3, G, (2,), np.float32)
    two_env_step(acc, 0, 0)
    two_env_step(acc, 1, 1)
    acc.reset()
    two_env_step(acc, 50, 60, term=(True, True))
    obs, act, rew, disc, nxt = acc.pop()
    assert sorted(obs[:, 1].tolist()) == [50, 60]
    assert np.all(disc == 0)
    assert sorted(rew.tolist()) == [50, 60]


def test_reset_clears_pending_autoreset_step() -> None:
    """A recreated env has no pending NEXT_STEP reset step: its next step is a transition."""
    acc = acc1(n=1, autoreset_next_step=True)
    step1(acc, 0, 0, 1.0, 1, term=True)
    assert len(acc) == 1
    acc.reset(np.array([True]))
    step1(acc, 0, 1, 5.0, 1)
    assert len(acc) == 2
    # without the reset, the step after the done step is ignored
    acc2 = acc1(n=1, autoreset_next_step=True)
    step1(acc2, 0, 0, 1.0, 1, term=True)
    step1(acc2, 1, 1, 0.0, 0)
    assert len(acc2) == 1


def _feed(acc, rng, steps: int, e: int, ctr: np.ndarray, lengths) -> None:
    """Deterministic Chain-like stream (manual resets) given an RNG for actions."""
    for _ in range(steps):
        a = rng.integers(2, size=e)
        obs = ctr.astype(np.float32).reshape(-1, 1)
        nxt = obs + 1
        done = (ctr + 1) == np.asarray(lengths)
        term = done & (np.arange(e) % 2 == 0)
        trunc = done & ~term
        acc.add(obs, a, ctr + 1.0, nxt, term, trunc)
        ctr[:] = np.where(done, 0, ctr + 1)


@pytest.mark.parametrize("next_step", [False, True])
def test_state_dict_round_trip_continues_identically(next_step: bool) -> None:
    e, lengths = 3, [4, 5, 7]
    a = NStepAccumulator(e, 3, G, (1,), np.float32, autoreset_next_step=next_step)
    rng = np.random.default_rng(0)
    ctr = np.zeros(e, dtype=np.int64)
    _feed(a, rng, 9, e, ctr, lengths)  # leaves open windows and unpopped transitions
    pending = len(a)
    assert pending > 0
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    assert len(a) == pending  # saving keeps them pending
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    b_ = NStepAccumulator(e, 3, G, (1,), np.float32, autoreset_next_step=next_step)
    b_.load_state_dict(state)
    assert len(b_) == pending
    rng_state = rng.bit_generator.state
    rng_b = np.random.default_rng()
    rng_b.bit_generator.state = rng_state
    ctr_b = ctr.copy()
    _feed(a, rng, 11, e, ctr, lengths)
    _feed(b_, rng_b, 11, e, ctr_b, lengths)
    ca, cb = a.pop(), b_.pop()
    assert len(ca[1]) == len(cb[1]) > pending
    for x, y in zip(ca, cb):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_state_dict_is_a_snapshot() -> None:
    a = acc1()
    step1(a, 0, 0, 1.0, 1)
    step1(a, 1, 1, 2.0, 2)
    state = a.state_dict()
    step1(a, 2, 0, 3.0, 3)
    step1(a, 3, 0, 4.0, 4)
    b_ = acc1()
    b_.load_state_dict(state)
    assert len(b_) == 0
    step1(b_, 2, 1, 30.0, 3)
    obs, act, rew, disc, nxt = b_.pop()
    assert obs[0, 0] == 0 and act[0] == 0 and rew[0] == pytest.approx(1 + 1.8 + 0.81 * 30)


def test_num_recorded_bounds_complete_transitions() -> None:
    """The actor's O(1) chunk trigger: len <= num_recorded <= len + E * n at every step."""
    e, n = 3, 3
    acc = NStepAccumulator(e, n, G, (1,), np.float32, track_q=True)
    rng = np.random.default_rng(7)
    obs = np.zeros((e, 1), dtype=np.float32)
    for t in range(200):
        term, trunc = rng.random(e) < 0.1, rng.random(e) < 0.05
        nxt = obs + 1
        acc.add(obs, rng.integers(2, size=e), np.ones(e), nxt, term, trunc,
                q_sa=np.zeros(e, np.float32), v_obs=np.zeros(e, np.float32), v_final=np.zeros(e, np.float32))
        done = term | trunc
        obs = np.where(done[:, None], 0, nxt).astype(np.float32)
        k = len(acc)
        assert k <= acc.num_recorded <= k + e * n, (t, k, acc.num_recorded)
        if t % 17 == 0:
            cols = acc.pop()
            assert (0 if cols is None else len(cols[1])) == k
            assert acc.num_recorded <= e * n


def test_keep_obs_false_gives_the_same_transitions_without_observations() -> None:
    """Frame-deduplicated actors keep ids, not stacks: every other column is unchanged,
    through a state_dict round trip too."""
    e, lengths = 3, [4, 5, 7]
    kw = dict(track_ids=True, track_q=True)
    a = NStepAccumulator(e, 3, G, (1,), np.float32, **kw)
    b_ = NStepAccumulator(e, 3, G, (1,), np.float32, keep_obs=False, **kw)
    ctr = np.zeros(e, dtype=np.int64)
    rng = np.random.default_rng(3)
    for t in range(40):
        obs = ctr.astype(np.float32).reshape(-1, 1)
        done = (ctr + 1) == np.asarray(lengths)
        term, trunc = done & (np.arange(e) != 1), done & (np.arange(e) == 1)
        act = rng.integers(2, size=e)
        extra = dict(obs_id=ctr * 10, next_obs_id=ctr * 10 + 10, q_sa=obs[:, 0] / 2, v_obs=obs[:, 0], v_final=obs[:, 0] + 1)
        a.add(obs, act, ctr + 1.0, obs + 1, term, trunc, **extra)
        b_.add(None, act, ctr + 1.0, None, term, trunc, **extra)
        ctr[:] = np.where(done, 0, ctr + 1)
        if t == 20:
            state = b_.state_dict()
            b_ = NStepAccumulator(e, 3, G, (1,), np.float32, keep_obs=False, **kw)
            b_.load_state_dict(state)
        if t % 9 == 8:
            ca, cb = a.pop(), b_.pop()
            assert cb[0] is None and cb[4] is None
            for i in (1, 2, 3, 5, 6, 7, 8):
                np.testing.assert_array_equal(ca[i], cb[i])
