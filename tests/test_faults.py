"""Fault drills: an injected fault is survived, and what it cost is counted. After each
drill the accounting is exact, no process is left, and the summary is written.

Here: an env raising in the evaluator (once, or every time); graceful stops (the budget,
SIGTERM and SIGINT at seeded random times) dropping nothing; a full disk while
checkpointing; the learner-side process SIGKILLed in the middle of writing a checkpoint,
then ``--resume``. Drills that live beside the code they exercise: an actor process
SIGKILLed and a crashing env in an actor (``test_runtime.py``), a lost gorila learner
(``test_topologies.py``), corrupt and malicious checkpoints (``test_checkpoint.py``),
NaN/inf rewards and observations (``test_runtime.py``, ``test_ray_runtime.py``), the loss
of a Ray actor, learner, replay shard, parameter server and node (``test_ray_*.py``).
Learning runs use a fixed seed and an env-step budget.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _util import config_with, descendants
from test_runtime import _alive, _kill_started_runs, _start_train, _wait_for  # noqa: F401  (autouse fixture)

from distdqn.config import EnvConfig
from distdqn.envs import env_spaces
from distdqn.io import checkpoint as checkpoint_module
from distdqn.io.checkpoint import complete_checkpoints, load_checkpoint, load_latest
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
    # no target return: a run that solves CartPole early would stop short of the budget
    r, s = _train(tmp_path, "--total-env-steps", "8000", "--set", "eval.target_return=null",
                  "--set", f"eval.separate_process={str(separate).lower()}")
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


def test_a_full_disk_while_checkpointing_is_reported_and_the_last_good_checkpoint_stays(tmp_path, monkeypatch,
                                                                                        caplog):
    """The 2nd and 3rd checkpoint writes fail with ENOSPC: the run says so, keeps the 1st
    checkpoint, leaves no partial file, trains on, and checkpoints again once there is room."""
    from distdqn import cli

    real_save, calls = checkpoint_module.torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) in (2, 3):
            f.write(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(f, "name", None))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    run = tmp_path / "run"
    rc = cli.main(["train", "--env", "CartPole-v1", "--runtime", "serial", "--no-progress", "--run-dir", str(run),
                   "--total-env-steps", "3000", "--set", "checkpoint_period=150", "--set", "eval.eval_period=0",
                   "--set", "replay.min_replay_size=500", "--set", "keep_checkpoints=5"])
    assert rc == 0
    assert "checkpoint failed (No space left on device" in caplog.text and "the last good checkpoint is" in caplog.text
    s = json.loads((run / "summary.json").read_text())
    assert s["checkpoint_failures"] == 2 and s["accounting_ok"] and s["updates"] > 0
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert not [n for n in left if n.endswith(".tmp")], left
    ckpts = complete_checkpoints(run)
    assert len(ckpts) == len(calls) - 2 >= 2  # the 1st, and every one after the disk had room again
    for path in ckpts:
        load_checkpoint(path)


_DIE_IN_SECOND_CHECKPOINT = """
import os, signal, sys
import distdqn.io.checkpoint as ck
real, seen = ck._atomic_write, []
def dying(path, write):
    if path.suffix == ".pt":
        seen.append(path)
        if len(seen) == 2:  # half the file written, then the process is gone
            with open(path.with_name(path.name + ".tmp"), "wb") as f:
                f.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
    return real(path, write)
ck._atomic_write = dying
from distdqn.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_the_learner_side_killed_while_writing_a_checkpoint_keeps_the_previous_one_and_resumes(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _DIE_IN_SECOND_CHECKPOINT, "train", "--env", "CartPole-v1",
                             "--no-progress", "--run-dir", str(run), "--total-env-steps", "1000000",
                             "--set", "checkpoint_period=300", "--set", "eval.target_return=null",
                             "--set", "checkpoint_replay=true"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        kids: set[int] = set()
        while proc.poll() is None:
            kids |= descendants(proc.pid)
            time.sleep(0.05)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert (run / "checkpoints").is_dir() and list((run / "checkpoints").glob("*.tmp"))  # died mid-write
    _wait_for(lambda: not [k for k in kids if _alive(k)], limit_s=30)  # actors notice and exit
    found = load_latest(run)
    assert found is not None and len(complete_checkpoints(run)) == 1
    steps_before = found[1]["counters"]["env_steps"]
    r = subprocess.run([*CLI, "train", "--resume", str(run), "--total-env-steps", str(steps_before + 3000),
                        "--no-progress"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((run / "summary.json").read_text())
    assert s["resumed_from"] is not None and s["env_steps"] >= steps_before + 3000
    assert s["accounting_ok"] and s["dropped"] == 0


@pytest.mark.slow
def test_sigterm_and_sigint_at_random_times_stop_gracefully(tmp_path):
    """10 seeded trials: a signal at a random moment of training; each run exits 0 with its
    summary, a loadable checkpoint, nothing dropped, and no process left."""
    rng = np.random.default_rng(19)
    for trial in range(10):
        sig = signal.SIGTERM if rng.random() < 0.5 else signal.SIGINT
        delay = float(rng.uniform(0.0, 3.0))
        (tmp_path / f"t{trial}").mkdir()
        proc, run = _start_train(tmp_path / f"t{trial}", "--total-env-steps", "10000000",
                                 "--set", "eval.target_return=null", "--set", "eval.eval_period=2000")
        _wait_for(lambda: (run / "metrics.csv").exists() and (run / "metrics.csv").read_text().count("\n") >= 2)
        time.sleep(delay)
        kids = descendants(proc.pid)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        where = f"trial {trial}: {sig.name} after {delay:.2f} s"
        assert proc.returncode == 0, f"{where}: {err}"
        assert "Traceback" not in err, where
        s = json.loads((run / "summary.json").read_text())
        assert s["stop_reason"] == sig.name and s["accounting_ok"] and s["dropped"] == 0, (where, s)
        assert load_latest(run) is not None, where
        _wait_for(lambda: not [k for k in kids if _alive(k)], limit_s=30)
