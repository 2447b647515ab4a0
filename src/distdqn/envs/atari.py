"""The DQN Atari preprocessing (Mnih et al. 2015, "Human-level control through deep
reinforcement learning", Nature, Methods: "Preprocessing" and "Training details"; sticky
actions as in Machado et al. 2018, "Revisiting the Arcade Learning Environment", JAIR)."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from distdqn.config import EnvConfig

__all__ = ["EpisodicLife", "FireReset", "make_atari", "sign_reward"]


def sign_reward(reward: SupportsFloat) -> np.float32:
    """Reward clipping to its sign, {-1, 0, +1} as float32 (Mnih et al. 2015, Methods)."""
    return np.float32(np.sign(float(reward)))


class EpisodicLife(gymnasium.Wrapper):
    """A lost life ends the *learning* episode; the game goes on (Mnih et al. 2015).

    ``step`` returns ``terminated=True`` when the ALE life counter drops while the
    game is not over (a drop to 0 lives waits for the real game over). ``reset``
    restarts the game only when it is really over (terminated or truncated by the
    game), otherwise it takes one no-op step (action 0, ``NOOP`` in the ALE) and
    returns that observation, so lives and score carry over. ``seed`` and
    ``options`` are passed on only to real resets; a life-loss reset ignores them.

    Must wrap an ALE env (``env.unwrapped.ale``). Observations and rewards unchanged.
    """

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        if not hasattr(env.unwrapped, "ale"):
            raise TypeError(f"EpisodicLife needs an ALE environment, got {env.unwrapped!r}")
        self._lives = 0
        self._game_over = True

    @property
    def game_over(self) -> bool:
        """Whether the game itself ended (the next ``reset`` is a real one)."""
        return self._game_over

    def _ale_lives(self) -> int:
        return int(self.env.unwrapped.ale.lives())

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._game_over = bool(terminated or truncated)
        lives = self._ale_lives()
        if not self._game_over and 0 < lives < self._lives:
            terminated = True
        self._lives = lives
        return obs, reward, terminated, truncated, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if self._game_over:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # the no-op itself ended the game: start anew
                obs, info = self.env.reset(seed=seed, options=options)
        self._game_over = False
        self._lives = self._ale_lives()
        return obs, info


class FireReset(gymnasium.Wrapper):
    """Takes the ``FIRE`` action right after every reset, for games that wait for it
    to start (e.g. Breakout launches the ball); common DQN practice. If that step
    ends the episode, the env is reset once more. Spaces unchanged.

    Must wrap an ALE env whose action meanings include ``FIRE``.
    """

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        meanings = list(env.unwrapped.get_action_meanings())
        if "FIRE" not in meanings:
            raise TypeError(f"FireReset needs a FIRE action, the game has {meanings}")
        self._fire = meanings.index("FIRE")

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        obs, _, terminated, truncated, _ = self.env.step(self._fire)
        if terminated or truncated:
            obs, info = self.env.reset(seed=seed, options=options)
        return obs, info


def make_atari(cfg: EnvConfig) -> gymnasium.Env:
    make_kwargs: dict[str, Any] = {
        "frameskip": 1,  # AtariPreprocessing skips frames (and max-pools the last two)
        "repeat_action_probability": cfg.sticky_actions,
    }
    if cfg.max_episode_steps is not None:
        # Truncate inside the ALE so RecordEpisodeStatistics sees the truncation.
        make_kwargs["max_num_frames_per_episode"] = cfg.max_episode_steps * cfg.frame_skip
    env = gymnasium.make(cfg.id, **{**make_kwargs, **cfg.kwargs})
    env = gymnasium.wrappers.RecordEpisodeStatistics(env)
    env = gymnasium.wrappers.AtariPreprocessing(
        env,
        noop_max=cfg.noop_max,
        frame_skip=cfg.frame_skip,
        screen_size=84,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    if cfg.episodic_life:
        env = EpisodicLife(env)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireReset(env)
    if cfg.clip_rewards:
        env = gymnasium.wrappers.TransformReward(env, sign_reward)
    return gymnasium.wrappers.FrameStackObservation(env, cfg.frame_stack)
