"""Tests of the envpool backend (``env.backend: envpool``): the adapter's contract, its
equivalence with the Gymnasium path, the actor on top of it, and a short training run.

Skipped when envpool is not installed (``pip install envpool``). The error for a missing
envpool is tested in ``test_envs.py``, which runs without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

envpool = pytest.importorskip("envpool")

from distdqn.config import EnvConfig, from_dict  # noqa: E402
from distdqn.envs.envpool import EnvPoolVectorEnv, envpool_task_id  # noqa: E402
from distdqn.envs import EnvSpaces, EnvSpecError, env_spaces, make_vector_env  # noqa: E402
from distdqn.program import build_actor, build_replay, spaces_for  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"

def _run_episodes(venv, policy, episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Step ``venv`` with ``policy(obs, rng)`` the way the actor does (reset finished sub-envs
    with a mask and fresh seeds) until ``episodes`` games ended; returns their real returns
    and lengths from ``info["episode"]``."""
    rng = np.random.default_rng(seed)
    n = venv.num_envs
    obs, _ = venv.reset(seed=[int(s) for s in rng.integers(2**31 - 1, size=n)])
    returns, lengths = [], []
    while len(returns) < episodes:
        obs, _, term, trunc, info = venv.step(policy(obs, rng))
        done = term | trunc
        if "episode" in info:
            for i in np.flatnonzero(info["_episode"]):
                returns.append(float(info["episode"]["r"][i]))
                lengths.append(int(info["episode"]["l"][i]))
        if done.any():
            seeds = [int(rng.integers(2**31 - 1)) if d else None for d in done]
            obs, _ = venv.reset(seed=seeds, options={"reset_mask": done})
    venv.close()
    return np.array(returns[:episodes]), np.array(lengths[:episodes])


# ----------------------------------------------------------------------------- ids, spaces, errors


def test_task_ids_and_unknown_id() -> None:
    assert envpool_task_id("ALE/Pong-v5", atari=True) == "Pong-v5"
    assert envpool_task_id("BreakoutNoFrameskip-v4", atari=True) == "Breakout-v5"
    assert envpool_task_id("CartPole-v1", atari=False) == "CartPole-v1"
    with pytest.raises(EnvSpecError, match="distdqn/Chain-v0") as exc:
        env_spaces(EnvConfig(id="distdqn/Chain-v0", backend="envpool"))
    assert "env.backend=envpool" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(EnvSpecError, match="did you mean 'CartPole-v1'"):
        make_vector_env(EnvConfig(id="CartPol-v1", backend="envpool"), 2)
    with pytest.raises(EnvSpecError, match="Discrete"):
        env_spaces(EnvConfig(id="Pendulum-v1", backend="envpool"))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "ALE/Pong-v5"])
def test_spaces_and_observations_match_gymnasium(env_id: str) -> None:
    sp = env_spaces(EnvConfig(id=env_id, backend="envpool"))
    assert sp == env_spaces(EnvConfig(id=env_id))
    expected = (EnvSpaces((4,), np.dtype(np.float32), 2) if env_id == "CartPole-v1"
                else EnvSpaces((4, 84, 84), np.dtype(np.uint8), 6))
    assert sp == expected
    venv = make_vector_env(EnvConfig(id=env_id, backend="envpool"), 3)
    obs, info = venv.reset(seed=[1, 2, 3])
    assert obs.shape == (3, *sp.obs_shape) and obs.dtype == sp.obs_dtype
    obs2, rew, term, trunc, _ = venv.step(np.zeros(3, dtype=np.int64))
    assert obs2.shape == obs.shape and obs2.dtype == obs.dtype
    assert rew.dtype == np.float64 and term.dtype == bool and trunc.dtype == bool
    assert rew.shape == term.shape == trunc.shape == (3,)
    venv.close()


def test_seed_comes_from_the_first_reset_and_later_seeds_are_ignored() -> None:
    def trajectory(seeds_first, seeds_later):
        v = make_vector_env(EnvConfig(id="CartPole-v1", backend="envpool"), 2)
        out = [v.reset(seed=seeds_first)[0]]
        out.append(v.reset(seed=seeds_later, options={"reset_mask": np.array([True, True])})[0])
        assert v.seed == next(s for s in seeds_first if s is not None)
        v.close()
        return np.stack(out)

    a = trajectory([None, 11], [5, 6])
    np.testing.assert_array_equal(a, trajectory([None, 11], [7, 8]))  # later seeds ignored
    assert not np.array_equal(a, trajectory([12, None], [5, 6]))  # the first one counts


# ----------------------------------------------------------------------------- contract


def test_cartpole_truncation_episode_stats_and_no_autoreset() -> None:
    venv = make_vector_env(EnvConfig(id="CartPole-v1", backend="envpool", max_episode_steps=5), 2)
    venv.reset(seed=[3, 4])
    for t in range(5):
        # alternate actions: the pole stays up for 5 steps, the time limit ends the episode
        _, rew, term, trunc, info = venv.step(np.full(2, t % 2))
        np.testing.assert_array_equal(rew, [1.0, 1.0])
    assert trunc.all() and not term.any()
    assert info["_episode"].all()
    np.testing.assert_array_equal(info["episode"]["r"], [5.0, 5.0])
    np.testing.assert_array_equal(info["episode"]["l"], [5, 5])
    with pytest.raises(RuntimeError, match="not\\s+reset"):
        venv.step(np.zeros(2, dtype=np.int64))
    venv.close()


def test_cartpole_termination_and_partial_reset() -> None:
    venv = make_vector_env(EnvConfig(id="CartPole-v1", backend="envpool"), 3)
    obs, _ = venv.reset(seed=[0])
    steps = 0
    while True:  # always push right: the pole falls (terminated) in about 10 steps
        obs, rew, term, trunc, info = venv.step(np.ones(3, dtype=np.int64))
        steps += 1
        if term.any():
            break
    assert not trunc.any() and steps < 50
    np.testing.assert_array_equal(info["_episode"], term)
    np.testing.assert_array_equal(info["episode"]["r"][term], steps)
    np.testing.assert_array_equal(info["episode"]["l"][term], steps)
    before = obs.copy()
    after, _ = venv.reset(options={"reset_mask": term})
    np.testing.assert_array_equal(after[~term], before[~term])  # others untouched
    assert np.all(np.abs(after[term]) <= 0.05)  # CartPole starts within +-0.05
    venv.close()


def test_atari_truncation_reset_stack_and_partial_reset() -> None:
    venv = make_vector_env(EnvConfig(id="ALE/Pong-v5", backend="envpool", max_episode_steps=30), 2)
    obs, _ = venv.reset(seed=[7, 8])
    assert (obs == obs[:, -1:]).all()  # a reset observation is its frame repeated
    prev = obs
    for t in range(29):  # the limit counts agent steps since the game's reset: FIRE + 29 steps
        assert not trunc.any() if t else True
        obs, _, term, trunc, info = venv.step(np.array([2, 3]))
        np.testing.assert_array_equal(obs[:, :-1], prev[:, 1:])  # a stack of the last 4 frames
        prev = obs
    assert trunc.all() and not term.any() and info["_episode"].all()
    assert np.all(info["episode"]["r"] <= 0)  # nothing scored against the CPU in 30 steps
    np.testing.assert_array_equal(info["episode"]["l"], [30 * 4] * 2)  # emulator frames, FIRE step included
    obs2, _ = venv.reset(options={"reset_mask": np.array([True, False])})
    np.testing.assert_array_equal(obs2[1], obs[1])
    assert (obs2[0] == obs2[0, -1:]).all()
    venv.close()


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("game,steps", [("ALE/Pong-v5", 400), ("ALE/Breakout-v5", 400)])
def test_atari_pixel_identical_to_gymnasium_with_one_noop(game: str, steps: int) -> None:
    """With noop_max=1 (no random no-ops) both paths are deterministic: the same actions give
    the same observations, clipped rewards, terminations (Breakout: 5 life losses end learning
    episodes, only the game over gives info['episode']) and real returns."""
    g = make_vector_env(EnvConfig(id=game, noop_max=1), 1)
    e = make_vector_env(EnvConfig(id=game, noop_max=1, backend="envpool"), 1)
    og, _ = g.reset(seed=[1])
    oe, _ = e.reset(seed=[1])
    np.testing.assert_array_equal(og, oe)
    rng = np.random.default_rng(0)
    life_losses = games = 0
    for _ in range(steps):
        a = rng.integers(g.single_action_space.n, size=1)
        og, rg, tg, ug, ig = g.step(a)
        oe, re, te, ue, ie = e.step(a)
        np.testing.assert_array_equal(og, oe)
        np.testing.assert_array_equal(rg, re)
        assert (bool(tg[0]), bool(ug[0])) == (bool(te[0]), bool(ue[0]))
        assert ("episode" in ig) == ("episode" in ie)
        if "episode" in ig:
            games += 1
            assert ig["episode"]["r"][0] == ie["episode"]["r"][0]
        elif tg[0]:
            life_losses += 1
        if tg[0] or ug[0]:
            og, _ = g.reset(options={"reset_mask": tg | ug})
            oe, _ = e.reset(options={"reset_mask": te | ue})
            np.testing.assert_array_equal(og, oe)
    if game == "ALE/Breakout-v5":
        assert life_losses >= 4 and games >= 1  # a random Breakout game lasts about 250 steps
    g.close()
    e.close()


def test_cartpole_fixed_policy_episode_lengths_agree() -> None:
    """Pole-angle policy (push toward the side the pole leans), 200 episodes each: mean length
    about 42 on both backends (std about 9, so the means' difference has std about 0.9)."""

    def policy(obs, rng):
        return (obs[:, 2] > 0).astype(np.int64)

    rg, lg = _run_episodes(make_vector_env(EnvConfig(id="CartPole-v1"), 4), policy, 200, seed=0)
    re, le = _run_episodes(make_vector_env(EnvConfig(id="CartPole-v1", backend="envpool"), 4), policy, 200, seed=0)
    np.testing.assert_array_equal(rg, lg)  # CartPole: return == length
    np.testing.assert_array_equal(re, le)
    assert 36 < lg.mean() < 48 and 36 < le.mean() < 48
    assert abs(lg.mean() - le.mean()) < 3.0
    assert abs(lg.std() - le.std()) < 3.0


@pytest.mark.slow
def test_pong_random_returns_agree() -> None:
    """Default preprocessing (random no-ops), uniformly random actions, 4 games each: a random
    Pong player loses about -20.3 per game (std about 0.8)."""

    def policy(obs, rng):
        return rng.integers(6, size=obs.shape[0])

    rg, lg = _run_episodes(make_vector_env(EnvConfig(id="ALE/Pong-v5"), 4), policy, 4, seed=0)
    re, le = _run_episodes(make_vector_env(EnvConfig(id="ALE/Pong-v5", backend="envpool"), 4), policy, 4, seed=0)
    for r in (rg, re):
        assert np.all(r >= -21) and np.all(r <= -15) and np.all(r == np.round(r))  # real, unclipped scores
    assert abs(rg.mean() - re.mean()) <= 1.5
    for length in (lg, le):  # emulator frames: 4 per agent step; a random game lasts 750-1250 steps
        assert np.all((length > 4 * 600) & (length < 4 * 1500))


# ----------------------------------------------------------------------------- actor on envpool


def _actor_cfg(env_id: str, **extra):
    data = {"env": {"id": env_id, "backend": "envpool", "envs_per_actor": 2},
            "actor": {"chunk_size": 32, "epsilon_decay_steps": 100}, "replay": {"min_replay_size": 32}, "learner": {"batch_size": 32}}
    for key, value in extra.items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = value
    return from_dict(data)


def test_actor_cartpole_chunks_on_envpool() -> None:
    # Random actions throughout (epsilon stays ~1), so episodes do not hinge on the network's init.
    cfg = _actor_cfg("CartPole-v1", **{"env.max_episode_steps": 20, "actor.epsilon_decay_steps": 1_000_000})
    spaces = spaces_for(cfg)
    actor = build_actor(cfg, spaces, 0)
    assert isinstance(actor.envs, EnvPoolVectorEnv)
    g, chunks = cfg.learner.gamma, []
    for _ in range(200):
        c = actor.step()
        if c is not None:
            chunks.append(c)
    actor.close()
    assert len(chunks) >= 8
    for c in chunks:
        t = len(c)
        assert c.obs.shape == c.next_obs.shape == (t, 4) and c.obs.dtype == np.float32
        assert c.action.dtype == np.int64 and c.priority.shape == (t,)
        # n-step discounts: g^m (m <= 3, incl. truncation at 20 steps) or 0 (pole fell)
        allowed = np.array([0.0, g, g**2, g**3], dtype=np.float32)
        assert np.all(np.min(np.abs(c.discount[:, None] - allowed[None]), axis=1) < 1e-6)
    lengths = [x for c in chunks for x in c.episode_lengths]
    returns = [x for c in chunks for x in c.episode_returns]
    assert len(lengths) >= 10 and lengths == [int(r) for r in returns] and max(lengths) <= 20
    assert 20 in lengths  # some episodes reached the time limit (truncated)
    assert sum(c.env_steps for c in chunks) <= actor.env_steps == 2 * 200


def test_actor_pong_frame_dedup_chunks_on_envpool_and_replay() -> None:
    cfg = _actor_cfg("ALE/Pong-v5", **{"env.max_episode_steps": 40, "replay.capacity": 2000})
    spaces = spaces_for(cfg)
    actor = build_actor(cfg, spaces, 0)
    assert actor.frame_dedup
    replay = build_replay(cfg, spaces)
    chunks = []
    for _ in range(120):  # 240 transitions; 40-step games end truncated, so resets happen too
        c = actor.step()  # the actor checks every step that observations are frame stacks
        if c is not None:
            chunks.append(c)
            replay.insert(c)
    actor.close()
    assert len(chunks) >= 5
    for c in chunks:
        assert c.obs is None and c.next_obs is None  # compact: frames, not stacks
        assert c.frames.frames.ndim == 3 and c.frames.frames.shape[1:] == (84, 84)
        assert c.frames.frames.dtype == np.uint8
        assert c.obs_frame.shape == c.next_frame.shape == (len(c),)
    sent = sum(len(c.frames) for c in chunks)
    assert sent <= 2 * 120 + 2 * 8  # about one new frame per env step (+ reset frames)
    assert any(c.episode_lengths for c in chunks) and all(r <= 0 for c in chunks for r in c.episode_returns)
    batch = replay.sample(32)
    assert tuple(batch.obs.shape) == (32, 4, 84, 84) and tuple(batch.next_obs.shape) == (32, 4, 84, 84)


def test_actor_resume_on_envpool_starts_new_episodes(caplog) -> None:
    cfg = _actor_cfg("CartPole-v1")
    spaces = spaces_for(cfg)
    a1 = build_actor(cfg, spaces, 0)
    for _ in range(30):
        a1.step()
    state = a1.state_dict()
    a1.close()
    a2 = build_actor(cfg, spaces, 0)
    with caplog.at_level("WARNING"):
        a2.load_state_dict(state)
    assert "exact resume needs env.backend=gymnasium" in caplog.text
    assert a2.env_steps == 60 and a2.steps == 30
    assert np.all(np.abs(a2._obs) <= 0.05)  # every sub-env at a fresh start
    chunks = [c for c in (a2.step() for _ in range(40)) if c is not None]
    a2.close()
    assert chunks and all(np.isfinite(c.obs).all() for c in chunks)


# ----------------------------------------------------------------------------- end to end


def test_cli_serial_train_cartpole_envpool(tmp_path) -> None:
    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "distdqn.cli", "train", "--runtime", "serial", "--env-backend", "envpool",
         "--total-env-steps", "3000", "--run-dir", str(run), "--no-progress",
         "--set", "replay.min_replay_size=256", "--set", "eval.eval_episodes=3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(SRC)})  # this checkout's package, whatever is installed
    assert r.returncode == 0, r.stderr
    s = json.loads((run / "summary.json").read_text())
    assert s["env_steps"] >= 3000 and s["updates"] > 0 and s["accounting_ok"]
    assert s["final_eval_return"] is not None and s["final_eval_return"] >= 8  # CartPole returns >= 8
    assert "backend: envpool" in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_local_runtime_train_pong_envpool(tmp_path) -> None:
    """Two actor processes on Pong through envpool, frame-deduplicated replay, a short run."""
    from distdqn.runtime.local import run_local

    cfg = from_dict({
        "env": {"id": "ALE/Pong-v5", "backend": "envpool", "envs_per_actor": 2, "max_episode_steps": 200},
        "progress": False, "total_env_steps": 2000, "actor": {"num_actors": 2, "chunk_size": 32},
        "replay": {"min_replay_size": 256, "capacity": 5000, "samples_per_insert": 1},
        "learner": {"batch_size": 32}, "eval": {"eval_period": 0, "eval_episodes": 1, "target_return": None},
    })
    run = tmp_path / "run"
    run.mkdir()
    s = run_local(cfg, spaces_for(cfg), run)
    assert s["env_steps"] >= 2000 and s["updates"] > 0 and s["accounting_ok"]
    assert s["final_eval_return"] is not None and -21 <= s["final_eval_return"] <= 21
