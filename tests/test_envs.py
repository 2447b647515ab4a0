"""Tests of distdqn.envs (env building, Atari preprocessing) and distdqn.testing_envs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from distdqn.testing import envs as testing_envs
from distdqn.config import EnvConfig
from distdqn.envs import (
    EnvSpaces,
    EnvSpecError,
    EpisodicLife,
    env_spaces,
    is_atari,
    make_env,
    make_vector_env,
    sign_reward,
)

SRC = Path(__file__).resolve().parents[1] / "src"


def _ale(env: gymnasium.Env):
    return env.unwrapped.ale


# ----------------------------------------------------------------------------- spaces & errors


def test_cartpole_spaces() -> None:
    sp = env_spaces(EnvConfig(id="CartPole-v1"))
    assert sp == EnvSpaces(obs_shape=(4,), obs_dtype=np.dtype(np.float32), num_actions=2)


def test_unknown_id_raises_with_id_in_message() -> None:
    with pytest.raises(EnvSpecError, match="NoSuchEnv-v7") as exc:
        env_spaces(EnvConfig(id="NoSuchEnv-v7"))
    assert isinstance(exc.value, ValueError)
    assert "CartPole-v1" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(EnvSpecError, match="did you mean 'CartPole-v1'"):
        make_env(EnvConfig(id="CartPol-v1"))


def test_box_action_space_rejected() -> None:
    with pytest.raises(EnvSpecError, match="Discrete") as exc:
        make_env(EnvConfig(id="Pendulum-v1"))
    assert "Pendulum-v1" in str(exc.value) and "Box" in str(exc.value)


def test_is_atari() -> None:
    assert is_atari("ALE/Pong-v5")
    assert is_atari("PongNoFrameskip-v4")
    assert not is_atari("CartPole-v1")
    assert not is_atari("distdqn/Chain-v0")


def test_max_episode_steps_override_truncates_and_reports_episode() -> None:
    env = make_env(EnvConfig(id="distdqn/Chain-v0", max_episode_steps=3))
    env.reset(seed=0)
    rewards = []
    for _ in range(3):
        _, r, terminated, truncated, info = env.step(0)
        rewards.append(r)
    assert rewards == [1.0, 2.0, 3.0]
    assert truncated and not terminated
    assert info["episode"]["r"] == pytest.approx(6.0) and info["episode"]["l"] == 3
    env.close()


def test_spawned_interpreter_sees_registered_ids() -> None:
    code = (
        "import gymnasium, distdqn.envs, distdqn.testing.envs; "
        "assert 'distdqn/Crashing-v0' in gymnasium.registry; "
        "assert 'ALE/Pong-v5' in gymnasium.registry"
    )
    # SRC first, the rest kept: packages may come from PYTHONPATH too (a GPU machine's carried wheels).
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, timeout=60)


# ----------------------------------------------------------------------------- Atari


def test_pong_preprocessing_and_clipped_rewards() -> None:
    cfg = EnvConfig(id="ALE/Pong-v5")
    assert env_spaces(cfg) == EnvSpaces((4, 84, 84), np.dtype(np.uint8), 6)
    env = make_env(cfg)
    assert _ale(env).getFloat("repeat_action_probability") == 0.0
    obs, _ = env.reset(seed=1)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    rng = np.random.default_rng(0)
    rewards = []
    for _ in range(200):
        obs, r, terminated, truncated, info = env.step(int(rng.integers(6)))
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        assert isinstance(r, np.float32)  # passed through the sign clipping
        rewards.append(float(r))
        # Pong has no lives: an episode ends only with the game, and only then is it reported.
        assert ("episode" in info) == (terminated or truncated)
        if terminated or truncated:
            env.reset()
    assert set(rewards) <= {-1.0, 0.0, 1.0}
    assert -1.0 in rewards  # random play concedes points within 200 agent steps
    assert obs.max() > obs.min()  # a real image, not a blank frame
    env.close()


def test_sign_reward() -> None:
    assert [sign_reward(x) for x in (7.0, -3, 0.0, 0.25)] == [1.0, -1.0, 0.0, 1.0]
    assert isinstance(sign_reward(4), np.float32)


def test_sticky_actions_and_atari_time_limit() -> None:
    env = make_env(EnvConfig(id="ALE/Pong-v5", sticky_actions=0.25, max_episode_steps=30))
    assert _ale(env).getFloat("repeat_action_probability") == pytest.approx(0.25)
    env.reset(seed=0)
    for step in range(1, 31):
        _, _, terminated, truncated, info = env.step(0)
        if terminated or truncated:
            break
    assert truncated and not terminated and step <= 30
    assert "episode" in info
    env.close()


def test_breakout_episodic_life() -> None:
    # Unclipped rewards so the agent-seen sum can be compared with the real game return.
    env = make_env(EnvConfig(id="ALE/Breakout-v5", clip_rewards=False))
    ale = _ale(env)
    env.reset(seed=3)
    full_lives = ale.lives()
    assert full_lives == 5
    rng = np.random.default_rng(0)
    seen_return = 0.0
    life_losses = 0
    for _ in range(5000):
        lives_before = ale.lives()
        _, r, terminated, truncated, info = env.step(int(rng.integers(4)))
        seen_return += float(r)
        if ale.game_over() or truncated:
            assert terminated or truncated
            assert "episode" in info
            assert info["episode"]["r"] == pytest.approx(seen_return)
            break
        assert "episode" not in info  # not a real game end
        if ale.lives() < lives_before:
            life_losses += 1
            assert terminated and not truncated  # a lost life ends the learning episode
            lives_at_loss = ale.lives()
            frame_at_loss = ale.getEpisodeFrameNumber()
            stats_return = env.get_wrapper_attr("episode_returns")
            obs, _ = env.reset(seed=99)
            assert obs.shape == (4, 84, 84)
            # The game went on: same lives, frame counter and running return.
            assert ale.lives() == lives_at_loss < full_lives
            assert ale.getEpisodeFrameNumber() > frame_at_loss
            assert env.get_wrapper_attr("episode_returns") == pytest.approx(stats_return)
        else:
            assert not terminated
    else:
        pytest.fail("Breakout game did not end in 5000 random steps")
    assert life_losses == full_lives - 1
    # After the real game over, reset starts a new game with all lives.
    env.reset()
    assert ale.lives() == full_lives and ale.getEpisodeFrameNumber() < 200
    env.close()


def test_fire_reset_launches_the_ball() -> None:
    # Breakout waits for FIRE; only if the reset pressed it can NOOP-only play lose a life.
    env = make_env(EnvConfig(id="ALE/Breakout-v5"))
    env.reset(seed=0)
    for _ in range(400):
        _, _, terminated, truncated, _ = env.step(0)
        if terminated or truncated:
            break
    assert terminated and _ale(env).lives() == 4
    env.close()


def test_episodic_life_needs_ale() -> None:
    with pytest.raises(TypeError):
        EpisodicLife(gymnasium.make("CartPole-v1"))


# ----------------------------------------------------------------------------- vector env


def test_vector_env_disabled_autoreset_with_reset_mask() -> None:
    venv = make_vector_env(EnvConfig(id="distdqn/Chain-v0"), 3)
    assert venv.autoreset_mode == AutoresetMode.DISABLED
    obs, _ = venv.reset(seed=[0, 1, 2])
    assert obs.shape == (3, 1) and obs.dtype == np.float32
    for _ in range(2):
        obs, rew, term, trunc, _ = venv.step(np.zeros(3, dtype=np.int64))
    np.testing.assert_array_equal(obs[:, 0], [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(rew, [2.0, 2.0, 2.0])
    mask = np.array([False, True, False])
    obs, _ = venv.reset(seed=[None, 5, None], options={"reset_mask": mask})
    np.testing.assert_array_equal(obs[:, 0], [2.0, 0.0, 2.0])
    obs, rew, _, _, _ = venv.step(np.zeros(3, dtype=np.int64))
    np.testing.assert_array_equal(obs[:, 0], [3.0, 1.0, 3.0])
    np.testing.assert_array_equal(rew, [3.0, 1.0, 3.0])
    venv.close()


def test_vector_env_disabled_refuses_to_step_finished_env() -> None:
    venv = make_vector_env(EnvConfig(id="distdqn/Chain-v0", max_episode_steps=1), 2)
    venv.reset(seed=0)
    _, _, _, trunc, infos = venv.step(np.zeros(2, dtype=np.int64))
    assert trunc.all()
    assert infos["_episode"].all() and np.allclose(infos["episode"]["r"], 1.0)
    with pytest.raises(AssertionError):
        venv.step(np.zeros(2, dtype=np.int64))
    venv.close()


def test_vector_env_next_step_autoreset() -> None:
    venv = make_vector_env(
        EnvConfig(id="distdqn/Chain-v0"), 2, autoreset_mode=AutoresetMode.NEXT_STEP
    )
    venv.reset(seed=0)
    seen = []
    for _ in range(7):
        obs, _, term, _, _ = venv.step(np.zeros(2, dtype=np.int64))
        seen.append((float(obs[0, 0]), bool(term[0])))
    # 5 steps to the end, the 6th is the autoreset (obs 0), the 7th a fresh step.
    assert seen == [(1, False), (2, False), (3, False), (4, False), (5, True), (0, False), (1, False)]
    venv.close()


def test_make_vector_env_rejects_zero_envs() -> None:
    with pytest.raises(ValueError, match="num_envs"):
        make_vector_env(EnvConfig(), 0)


# ----------------------------------------------------------------------------- testing envs


def test_testing_env_ids_registered_and_idempotent() -> None:
    for env_id in testing_envs.TESTING_ENV_IDS:
        assert env_id in gymnasium.registry
    testing_envs._register()  # a second registration is a no-op, not an error
    assert env_spaces(EnvConfig(id="distdqn/Chain-v0")) == EnvSpaces((1,), np.dtype(np.float32), 2)
    assert env_spaces(EnvConfig(id="distdqn/NaNReward-v0")).obs_shape == (4,)


def _run(env: gymnasium.Env, steps: int) -> tuple[list[float], list[np.ndarray]]:
    """Step ``steps`` times with action 0/1 alternating, resetting after episode ends."""
    env.reset(seed=0)
    rewards, observations = [], []
    for t in range(steps):
        obs, r, terminated, truncated, _ = env.step(t % 2)
        rewards.append(float(r))
        observations.append(np.asarray(obs))
        if terminated or truncated:
            env.reset()
    return rewards, observations


def test_nan_reward_every_10th_step() -> None:
    rewards, _ = _run(gymnasium.make("distdqn/NaNReward-v0"), 35)
    nan_steps = [i + 1 for i, r in enumerate(rewards) if math.isnan(r)]
    assert nan_steps == [10, 20, 30]
    assert all(r == 1.0 for r in rewards if not math.isnan(r))
    rewards, _ = _run(gymnasium.make("distdqn/NaNReward-v0", nan_every=3), 9)
    assert [i + 1 for i, r in enumerate(rewards) if math.isnan(r)] == [3, 6, 9]


def test_nan_obs_every_7th_step() -> None:
    _, observations = _run(gymnasium.make("distdqn/NaNObs-v0"), 21)
    nan_steps = [i + 1 for i, o in enumerate(observations) if np.isnan(o).any()]
    assert nan_steps == [7, 14, 21]


def test_crashing_env_crashes_once_per_process() -> None:
    testing_envs.reset_crash_state()
    try:
        assert gymnasium.make("distdqn/Crashing-v0").unwrapped.crash_at == 100
        env = gymnasium.make("distdqn/Crashing-v0", crash_at=5)
        env.reset(seed=0)
        for _ in range(4):
            env.step(0)
        with pytest.raises(RuntimeError, match="injected env crash"):
            env.step(0)
        assert testing_envs.crash_state() == (5, True)
        # A recreated env (even one asking to crash again) keeps running.
        env = gymnasium.make("distdqn/Crashing-v0", crash_at=1)
        rewards, _ = _run(env, 50)
        assert rewards == [1.0] * 50
    finally:
        testing_envs.reset_crash_state()


def test_chain_rewards_and_termination() -> None:
    env = gymnasium.make("distdqn/Chain-v0")
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.tolist() == [0.0]
    trace = []
    for _ in range(5):
        obs, r, terminated, truncated, _ = env.step(1)
        trace.append((obs.tolist(), r, terminated, truncated))
    assert trace == [
        ([1.0], 1.0, False, False),
        ([2.0], 2.0, False, False),
        ([3.0], 3.0, False, False),
        ([4.0], 4.0, False, False),
        ([5.0], 5.0, True, False),
    ]
    env = gymnasium.make("distdqn/Chain-v0", length=2, truncate=True)
    env.reset()
    assert env.step(0)[1:4] == (1.0, False, False)
    assert env.step(0)[1:4] == (2.0, False, True)


# ----------------------------------------------------------------------------- envpool backend


def test_envpool_backend_missing_fails_with_one_line(monkeypatch, tmp_path, capsys) -> None:
    """Without envpool, choosing it is a config error naming env.backend and how to install
    it, from the library and from the CLI (exit code 2, nothing started); the Gymnasium
    backend is unaffected."""
    from distdqn.cli import main
    from distdqn.config import ConfigError

    monkeypatch.setitem(sys.modules, "envpool", None)  # import envpool -> ImportError
    with pytest.raises(ConfigError, match="env.backend") as exc:
        env_spaces(EnvConfig(id="CartPole-v1", backend="envpool"))
    msg = str(exc.value)
    assert "pip install envpool" in msg and "[envpool]" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="env.backend"):
        make_vector_env(EnvConfig(id="ALE/Pong-v5", backend="envpool"), 2)
    run = tmp_path / "r"
    assert main(["train", "--env-backend", "envpool", "--run-dir", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "env.backend" in err[0] and "pip install envpool" in err[0]
    assert not run.exists()
    assert env_spaces(EnvConfig(id="CartPole-v1")).num_actions == 2


def test_env_backend_choice_is_validated() -> None:
    from distdqn.config import ConfigError, from_dict

    assert from_dict({"env": {"backend": "envpool"}}).env.backend == "envpool"
    assert from_dict({}).env.backend == "gymnasium"
    with pytest.raises(ConfigError, match="env.backend") as exc:
        from_dict({"env": {"backend": "gym"}})
    assert "gymnasium" in str(exc.value) and "envpool" in str(exc.value)
    assert from_dict({}).env.envpool_threads == 1
    with pytest.raises(ConfigError, match="env.envpool_threads"):
        from_dict({"env": {"envpool_threads": -1}})
