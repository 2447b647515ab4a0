"""Fault drills: an injected fault is survived, and what it cost is counted.

This file holds the evaluator's drills (an env that raises in the evaluator, once or every
time); the actor, learner, checkpoint and Ray drills live beside the code they exercise
(``test_runtime.py``, ``test_topologies.py``, ``test_checkpoint.py``, ``test_ray_*.py``).
Learning runs use a fixed seed and an env-step budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _util import config_with

from distdqn.config import EnvConfig
from distdqn.envs import env_spaces
from distdqn.core import flat_params
from distdqn.program import build_network
from distdqn.roles.evaluator import MAX_ATTEMPTS, EvaluationFailed, Evaluator
from distdqn.runtime.evaluation import MAX_FAILED_EVALUATIONS, EvalOutcome, Evaluation
from distdqn.runtime.ledger import Counters
from distdqn.testing import envs as testing_envs

CLI = [sys.executable, "-m", "distdqn.cli"]


def _evaluator(env_id: str, **kwargs) -> tuple[Evaluator, np.ndarray]:
    cfg = config_with({}, **{"env.id": env_id, "env.kwargs": kwargs})
    spaces = env_spaces(cfg.env)
    net = build_network(cfg, spaces)
    return Evaluator(cfg.env, net, seed=3), flat_params(net).copy()


def test_evaluator_recreates_an_env_that_raises_and_gives_the_same_returns():
    """The retry starts over with the same episode seeds, so a crash changes nothing but the
    count (Crashing-v0 is CartPole-v1 up to its one crash)."""
    testing_envs.reset_crash_state()
    try:
        crashing, params = _evaluator("distdqn/Crashing-v0", crash_at=30)
        plain, _ = _evaluator("CartPole-v1")
        got = crashing.evaluate(params, 6)
        want = plain.evaluate(params, 6)
        assert testing_envs.crash_state()[1] and crashing.env_restarts == 1 and plain.env_restarts == 0
        np.testing.assert_array_equal(got, want)
        assert crashing.evaluations == plain.evaluations == 1
    finally:
        testing_envs.reset_crash_state()


def test_an_evaluation_whose_env_always_raises_fails_after_its_tries():
    testing_envs.reset_crash_state()
    try:
        ev, params = _evaluator("distdqn/Crashing-v0", crash_at=3, crashes=10**9)
        with pytest.raises(EvaluationFailed, match="raised in 3 tries in a row, last RuntimeError: injected env crash"):
            ev.evaluate(params, 4)
        assert ev.env_restarts == MAX_ATTEMPTS == 3
    finally:
        testing_envs.reset_crash_state()


def test_repeated_failed_evaluations_turn_evaluation_off():
    cfg = config_with({}, **{"eval.eval_period": 100})
    c = Counters(next_eval_at=100)
    evaluation = Evaluation(cfg, env_spaces(EnvConfig()), c, wall_time=lambda: 1.0)
    c.env_steps = 100
    for k in range(MAX_FAILED_EVALUATIONS - 1):
        assert evaluation.record(EvalOutcome(None, 100, env_restarts=3, error="boom")) is False
        assert not evaluation.off and evaluation.due()
    # a success in between resets the count
    assert evaluation.record(EvalOutcome(np.array([10.0, 20.0]), 100)) is False
    assert c.last_eval_return == 15.0 and evaluation.failures == 0
    for k in range(MAX_FAILED_EVALUATIONS):
        evaluation.record(EvalOutcome(None, 100, env_restarts=3, error="boom"))
    assert evaluation.off and not evaluation.due()
    assert c.env_restarts == 3 * (2 * MAX_FAILED_EVALUATIONS - 1)
    assert c.last_eval_return == 15.0  # the last good evaluation is kept


def _train(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    run = tmp_path / "run"
    r = subprocess.run([*CLI, "train", "--env", "distdqn/Crashing-v0", "--no-progress", "--run-dir", str(run), *args],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = run / "summary.json"
    return r, json.loads(summary.read_text()) if summary.exists() else None


@pytest.mark.slow
@pytest.mark.parametrize("separate", [True, False], ids=["evaluator-process", "in-line"])
def test_a_crashing_env_in_the_evaluator_does_not_end_the_run(tmp_path, separate):
    """The issue's drill: each process's first Crashing env crashes once: both actors' and
    the evaluator's (in its own process, or in the learner process in line)."""
    r, s = _train(tmp_path, "--total-env-steps", "8000", "--set", f"eval.separate_process={str(separate).lower()}")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert s is not None and s["env_steps"] >= 8000 and s["accounting_ok"]
    assert s["final_eval_return"] is not None and s["evals"] >= 2
    assert s["env_restarts"] >= 3  # two actors and at least one evaluator
    assert s["actor_restarts"] == 0


def test_an_evaluator_env_that_always_raises_turns_evaluation_off_and_training_goes_on(tmp_path, monkeypatch, capsys, caplog):
    """In process (serial runtime), with only the evaluator's envs broken: every step of
    theirs raises, while the actors' CartPole envs are healthy."""
    import distdqn.roles.evaluator as evaluator_module
    from distdqn import cli
    from distdqn.envs import make_vector_env

    def broken_vector_env(env_cfg, n):
        envs = make_vector_env(env_cfg, n)

        def step(actions):
            raise RuntimeError("evaluator env is broken")

        envs.step = step
        return envs

    monkeypatch.setattr(evaluator_module, "make_vector_env", broken_vector_env)
    run = tmp_path / "run"
    rc = cli.main(["train", "--env", "CartPole-v1", "--runtime", "serial", "--no-progress", "--run-dir", str(run),
                   "--total-env-steps", "3000", "--set", "eval.eval_period=500", "--set", "eval.eval_episodes=2",
                   "--set", "replay.min_replay_size=500"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "evaluation is off for the rest of the run" in caplog.text and "Traceback" not in err
    s = json.loads((run / "summary.json").read_text())
    assert s["env_steps"] >= 3000 and s["updates"] > 0 and s["accounting_ok"]
    assert s["final_eval_return"] is None and s["evals"] == 0
    assert s["env_restarts"] == MAX_FAILED_EVALUATIONS * MAX_ATTEMPTS


@pytest.mark.slow
def test_a_graceful_stop_at_the_budget_drops_nothing(tmp_path):
    """Local runtime: at the budget, the chunks in pipes and inboxes and each actor's last
    partial chunk are inserted (past the rate limiter), not dropped."""
    run = tmp_path / "run"
    r = subprocess.run([*CLI, "train", "--env", "CartPole-v1", "--no-progress", "--run-dir", str(run),
                        "--total-env-steps", "6000", "--set", "eval.target_return=null",
                        "--set", "eval.eval_period=0"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((run / "summary.json").read_text())
    assert s["dropped"] == 0 and s["accounting_ok"]
    assert s["produced"] == s["inserted"] + s["rejected"] and s["inserted"] > 0
    assert s["env_steps"] >= 6000
