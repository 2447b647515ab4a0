"""Environments users bring: registered ids after ``env.imports``, ``module:id``, entry points
with ``env.kwargs`` (two third-party packages from PyPI, gym-simplegrid and popgym, and a
user's own file), observation spaces that need converting, and the one-line errors of
every mistake.

Learning tests use a fixed seed and an env-step budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from _util import config_with

from distdqn.config import EnvConfig
from distdqn.envs import EnvSpaces, env_spaces, make_env
from distdqn.program import spaces_for

SRC = Path(__file__).resolve().parents[1] / "src"
CLI = [sys.executable, "-m", "distdqn.cli"]
OBSTACLES = ["0000", "0101", "0001", "1000"]

# (package, registered id, entry point, kwargs for the entry point, observation shape as distdqn takes it)
PACKAGES = [
    ("gym_simplegrid", "SimpleGrid-8x8-v0", "gym_simplegrid.envs:SimpleGridEnv", {"obstacle_map": OBSTACLES},
     {"registered": (64,), "entry": (16,)}),
    ("popgym", "popgym-PositionOnlyCartPoleEasy-v0", "popgym.envs.position_only_cartpole:PositionOnlyCartPole",
     {"max_episode_length": 100}, {"registered": (2,), "entry": (2,)}),
]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("package,env_id,entry,kwargs,shapes", PACKAGES, ids=[p[0] for p in PACKAGES])
def test_third_party_envs_are_reached_three_ways(package, env_id, entry, kwargs, shapes):
    by_import = env_spaces(EnvConfig(id=env_id, imports=(package,)))
    by_module = env_spaces(EnvConfig(id=f"{package}:{env_id}"))
    by_entry = env_spaces(EnvConfig(id=entry, kwargs=kwargs))
    assert by_import.obs_shape == by_module.obs_shape == shapes["registered"]
    assert by_entry.obs_shape == shapes["entry"]
    for s in (by_import, by_module, by_entry):
        assert s.obs_dtype == np.float32 and s.num_actions in (2, 4)


def test_a_registered_id_needs_its_package_imported(tmp_path):
    """In a fresh interpreter the id is unknown until env.imports names its package."""
    r = _cli("check-env", "SimpleGrid-8x8-v0", cwd=tmp_path)
    assert r.returncode == 2 and "unknown environment id 'SimpleGrid-8x8-v0'" in r.stderr
    r = _cli("check-env", "SimpleGrid-8x8-v0", "--set", "env.imports=[gym_simplegrid]", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "observations as distdqn takes them: float32 (64,)" in r.stdout and "network: mlp" in r.stdout


USER_ENV = '''
import gymnasium
import numpy as np
from gymnasium import spaces


class Corridor(gymnasium.Env):
    """Walk right along a corridor of `length` cells to its end (+1)."""

    def __init__(self, length=5):
        self.length = length
        self.observation_space = spaces.Box(0, 1, (length,), np.int8)
        self.action_space = spaces.Discrete(2)
        self.pos = 0

    def _obs(self):
        o = np.zeros(self.length, np.int8)
        o[self.pos] = 1
        return o

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {}

    def step(self, action):
        self.pos = min(max(self.pos + (1 if action == 1 else -1), 0), self.length - 1)
        done = self.pos == self.length - 1
        return self._obs(), float(done), done, False, {}


class SequenceObs(Corridor):
    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Sequence(spaces.Discrete(3))


def broken(length=5):
    raise ValueError("the corridor is flooded")


NOT_CALLABLE = 42
'''


@pytest.fixture
def user_file(tmp_path) -> Path:
    p = tmp_path / "my_envs.py"
    p.write_text(textwrap.dedent(USER_ENV))
    return p


def test_a_user_env_in_a_file_is_reached_through_an_entry_point(user_file):
    s = env_spaces(EnvConfig(id=f"{user_file}:Corridor", kwargs={"length": 7}))
    assert s == EnvSpaces((7,), np.dtype(np.float32), 2)  # int8 observations become float32
    env = make_env(EnvConfig(id=f"{user_file}:Corridor", kwargs={"length": 7}, max_episode_steps=3))
    env.reset(seed=0)
    for _ in range(3):
        obs, _, term, trunc, _ = env.step(0)
    assert obs.dtype == np.float32 and not term and trunc  # the time limit applies to entry points too


@pytest.mark.parametrize("env_id_fmt,message", [
    ("no_such_module_xyz:Foo-v0", "cannot import 'no_such_module_xyz'"),
    ("NoSuchEnv-v0", "unknown environment id 'NoSuchEnv-v0'"),
    ("{file}:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a callable"),
    ("{file}:broken", "making the environment raised ValueError: the corridor is flooded"),
    ("{file}:SequenceObs", "has observation space Sequence("),
    ("Pendulum-v1", "the dqn agent needs a Discrete action space"),
    ("{file}:Missing", "has no attribute 'Missing'"),
])
def test_bad_envs_get_one_line_and_exit_2(tmp_path, user_file, env_id_fmt, message):
    env_id = env_id_fmt.format(file=user_file)
    r = _cli("train", "--env", env_id, "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("distdqn: error:")]
    assert len(err) == 1 and message in err[0], r.stderr
    assert not (tmp_path / "run").exists()  # nothing was started


def test_an_unimportable_env_import_is_one_line(tmp_path):
    r = _cli("check-env", "CartPole-v1", "--set", "env.imports=[nope_pkg_xyz]", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "env.imports: cannot import 'nope_pkg_xyz'" in r.stderr


def test_observation_conversions():
    """Discrete -> one-hot, Tuple -> concatenated one-hots, bool channels-last grid ->
    float32 channels first; the small CNN for small grids."""
    from distdqn.agents.dqn.networks import network_kind
    from distdqn.config import NetworkConfig

    assert env_spaces(EnvConfig(id="FrozenLake-v1")).obs_shape == (16,)
    assert env_spaces(EnvConfig(id="Blackjack-v1")).obs_shape == (32 + 11 + 2,)
    grid = env_spaces(EnvConfig(id="distdqn/Grid-v0"))
    assert grid == EnvSpaces((4, 10, 10), np.dtype(np.float32), 4)
    env = make_env(EnvConfig(id="distdqn/Grid-v0"))
    obs, _ = env.reset(seed=1)
    raw = env.unwrapped._obs()
    np.testing.assert_array_equal(obs, np.moveaxis(raw, -1, 0).astype(np.float32))
    assert network_kind(NetworkConfig(), grid.obs_shape)[0] == "small_cnn"
    assert network_kind(NetworkConfig(), (4, 84, 84))[0] == "nature_cnn"
    assert env_spaces(EnvConfig(id="distdqn/Grid-v0", channels_last="false")).obs_shape == (10, 10, 4)


def _serial(tmp_path: Path, name: str, steps: int, **over) -> dict:
    from distdqn.runtime.serial import run_serial

    base = {"runtime": "serial", "seed": 0, "total_env_steps": steps, "progress": False,
            "replay": {"min_replay_size": 500},
            "eval": {"eval_period": 0, "eval_episodes": 10, "target_return": None}}
    cfg = config_with(base, **over)
    run = tmp_path / name
    run.mkdir()
    return run_serial(cfg, spaces_for(cfg), run)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "Taxi-v4", "CliffWalking-v1", "Blackjack-v1"])
def test_toy_text_envs_train(tmp_path, env_id):
    s = _serial(tmp_path, "r", 3000, **{"env.id": env_id, "env.max_episode_steps": 100})
    assert s["updates"] > 300 and s["accounting_ok"] and s["final_eval_return"] is not None


@pytest.mark.slow
def test_frozen_lake_without_slipping_is_solved(tmp_path):
    s = _serial(tmp_path, "r", 20_000, **{"env.id": "FrozenLake-v1", "env.kwargs": {"is_slippery": False},
                                         "env.max_episode_steps": 50, "eval.eval_period": 2000,
                                         "eval.target_return": 1.0})
    assert s["final_eval_return"] == 1.0 and s["solved"], s


@pytest.mark.slow
def test_small_grid_is_learned_with_the_small_cnn(tmp_path):
    """``network.kind: auto`` picks the small CNN for the 10x10x4 bool grid, which learns
    the task: a random walk's return is about -0.4, the best about 0.87. The CartPole-tuned
    learning rate (8e-3) is too high for a CNN, as it is for Atari's. Four samples per
    insert (2,484 updates) learn it as well as sixteen, in a third of the time."""
    s = _serial(tmp_path, "r", 40_000, **{"env.id": "distdqn/Grid-v0", "eval.eval_episodes": 20,
                                         "learner.learning_rate": 1e-3, "replay.samples_per_insert": 4.0,
                                         "actor.epsilon_decay_steps": 10_000})
    assert s["final_eval_return"] >= 0.7, s


@pytest.mark.slow
@pytest.mark.parametrize("package,env_id,entry,kwargs,shapes", PACKAGES, ids=[p[0] for p in PACKAGES])
def test_third_party_envs_train_in_the_local_runtime(tmp_path, package, env_id, entry, kwargs, shapes):
    """Actor processes and the evaluator process resolve the id (fork-server children import
    the package themselves)."""
    r = _cli("train", "--env", f"{package}:{env_id}", "--total-env-steps", "3000", "--no-progress",
             "--set", "replay.min_replay_size=500", "--set", "eval.target_return=null",
             "--set", "eval.eval_period=1000", "--set", "eval.eval_episodes=3",
             "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["env_steps"] >= 3000 and s["updates"] > 100 and s["accounting_ok"]
