"""End-to-end tests of the serial and local runtimes and the CLI.

Learning tests use a fixed seed and an env-step budget, never wall-clock limits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _util import children as _children
from _util import config_with
from _util import descendants as _descendants

from distdqn.io.checkpoint import complete_checkpoints, load_checkpoint
from distdqn.config import ExperimentConfig, from_dict
from distdqn.program import spaces_for

CLI = [sys.executable, "-m", "distdqn.cli"]

SMALL = {
    "progress": False,
    "eval": {"eval_episodes": 5, "eval_period": 0, "target_return": None},
    "replay": {"min_replay_size": 256, "capacity": 20_000},
    "learner": {"batch_size": 64},
    "actor": {"chunk_size": 32},
}


def small_cfg(**over) -> ExperimentConfig:
    return config_with(SMALL, **over)


def run_serial_cfg(cfg: ExperimentConfig, run_dir: Path, resume: bool = False) -> dict:
    from distdqn.runtime.serial import run_serial

    run_dir.mkdir(parents=True, exist_ok=True)
    return run_serial(cfg, spaces_for(cfg), run_dir, resume=resume)


def final_params(run_dir: Path) -> torch.Tensor:
    state = load_checkpoint(complete_checkpoints(run_dir)[0])
    return state["params"]


# ----------------------------------------------------------------------------- serial


def test_serial_same_seed_same_metrics(tmp_path):
    cfg = small_cfg(runtime="serial", total_env_steps=3000, serial_log_steps=500)
    run_serial_cfg(cfg, tmp_path / "a")
    run_serial_cfg(cfg, tmp_path / "b")
    a = (tmp_path / "a" / "metrics.csv").read_text()
    b = (tmp_path / "b" / "metrics.csv").read_text()
    assert a.count("\n") >= 6
    assert a == b
    assert torch.equal(final_params(tmp_path / "a"), final_params(tmp_path / "b"))


def test_serial_different_seed_differs(tmp_path):
    run_serial_cfg(small_cfg(runtime="serial", total_env_steps=2000), tmp_path / "a")
    run_serial_cfg(small_cfg(runtime="serial", total_env_steps=2000, seed=1), tmp_path / "b")
    assert not torch.equal(final_params(tmp_path / "a"), final_params(tmp_path / "b"))


def test_serial_resume_is_bitwise_exact(tmp_path):
    """Stop at k, resume to 2k: parameters equal an uninterrupted run to 2k, bit for bit."""
    k = 2500
    base = dict(runtime="serial", checkpoint_replay=True, checkpoint_period=0)
    full = small_cfg(total_env_steps=2 * k, **base)
    s_full = run_serial_cfg(full, tmp_path / "full")
    first = small_cfg(total_env_steps=k, **base)
    run_serial_cfg(first, tmp_path / "part")
    s_resumed = run_serial_cfg(full, tmp_path / "part", resume=True)
    assert s_full["env_steps"] == s_resumed["env_steps"]
    assert s_full["updates"] == s_resumed["updates"] > 0
    assert torch.equal(final_params(tmp_path / "full"), final_params(tmp_path / "part"))


def test_nan_rewards_are_rejected_not_learned(tmp_path):
    cfg = small_cfg(runtime="serial", total_env_steps=3000, **{"env.id": "distdqn/NaNReward-v0"})
    s = run_serial_cfg(cfg, tmp_path / "r")
    assert s["rejected"] > 0
    assert s["produced"] == s["inserted"] + s["rejected"] + s["dropped"]
    assert s["updates"] > 0  # learning went on with finite data only
    # every NaN reward poisons at most n_step transitions' returns; about 1 in 10 steps is NaN
    assert s["rejected"] <= 3 * s["produced"] // 10 + 3 * 8
    assert s["rejected"] >= s["produced"] // 10 - 8


def test_nan_observations_are_rejected(tmp_path):
    cfg = small_cfg(runtime="serial", total_env_steps=1500, **{"env.id": "distdqn/NaNObs-v0"})
    s = run_serial_cfg(cfg, tmp_path / "r")
    assert s["rejected"] > 0
    assert s["accounting_ok"]


def test_crashing_env_is_recreated_and_counted(tmp_path):
    cfg = small_cfg(runtime="serial", total_env_steps=1500, **{"env.id": "distdqn/Crashing-v0"})
    from distdqn.testing.envs import reset_crash_state

    reset_crash_state()
    s = run_serial_cfg(cfg, tmp_path / "r")
    assert s["env_restarts"] == 1
    assert s["env_steps"] >= 1500


def test_nonfinite_loss_stops_with_update_number(tmp_path):
    from distdqn.core import NonFiniteLossError

    cfg = small_cfg(runtime="serial", total_env_steps=5000, **{"learner.learning_rate": 1e30, "learner.max_grad_norm": None,
                                                             "learner.optimizer": "rmsprop"})
    with pytest.raises(NonFiniteLossError, match=r"at update \d+"):
        run_serial_cfg(cfg, tmp_path / "r")
    assert (tmp_path / "r" / "summary.json").exists()


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path):
    cfg = small_cfg(runtime="serial", total_env_steps=2000, checkpoint_period=20, keep_checkpoints=3)
    run_serial_cfg(cfg, tmp_path / "r")
    ckpts = complete_checkpoints(tmp_path / "r")
    assert len(ckpts) == 3
    newest = ckpts[0]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    from distdqn.io.checkpoint import CheckpointError, load_latest

    with pytest.raises(CheckpointError, match=str(newest)):
        load_checkpoint(newest)
    path, _ = load_latest(tmp_path / "r")
    assert path == ckpts[1]


# ----------------------------------------------------------------------------- CLI


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_cli_bad_config_fails_fast(tmp_path):
    r = cli("train", "--set", "replay.capacity=0", "--run-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "replay.capacity" in err[0] and "0" in err[0]
    assert not (tmp_path / "r").exists()  # nothing was started or written


def test_cli_bad_choice_lists_allowed(tmp_path):
    r = cli("train", "--set", "replay.kind=lifo", cwd=tmp_path)
    assert r.returncode == 2
    assert "replay.kind" in r.stderr and "prioritized" in r.stderr and "uniform" in r.stderr and "fifo" in r.stderr


def test_cli_unknown_env(tmp_path):
    r = cli("train", "--env", "NoSuchEnv-v9", cwd=tmp_path)
    assert r.returncode == 2
    assert "NoSuchEnv-v9" in r.stderr and "Traceback" not in r.stderr


def test_cli_unsupported_space(tmp_path):
    r = cli("train", "--env", "Pendulum-v1", cwd=tmp_path)
    assert r.returncode == 2
    assert "Discrete" in r.stderr and "Traceback" not in r.stderr


def test_cli_serial_train_eval_plot(tmp_path):
    run = tmp_path / "run"
    r = cli("train", "--runtime", "serial", "--total-env-steps", "1500", "--run-dir", str(run), "--no-progress",
            "--set", "replay.min_replay_size=256", "--set", "eval.eval_episodes=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("config.yaml", "metrics.csv", "summary.json"):
        assert (run / name).is_file()
    assert list((run / "tb").glob("events.*"))
    s = json.loads((run / "summary.json").read_text())
    for key in ("final_eval_return", "env_steps", "updates", "wall_time_s", "sps", "ups",
                "produced", "inserted", "rejected", "dropped"):
        assert key in s
    assert s["accounting_ok"]
    r = cli("eval", str(run), "--episodes", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["episodes"] == 3
    r = cli("plot", str(run), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (run / "metrics.png").stat().st_size > 1000
    # --resume: a flag that would change the experiment is refused, not silently ignored
    r = cli("train", "--resume", str(run), "--env-backend", "envpool", "--seed", "3", cwd=tmp_path)
    assert r.returncode == 2 and "--seed, --env-backend" in r.stderr and "--resume" in r.stderr
    r = cli("train", "--resume", str(run), "--total-env-steps", "2000", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "summary.json").read_text())["env_steps"] >= 2000


# ----------------------------------------------------------------------------- local runtime


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def _spawned_pids(pid: int) -> list[int]:
    """The run's worker processes (actors, evaluator, learners): forks of multiprocessing's
    fork server (a child of ``pid``), or children of ``pid`` started with spawn."""
    pids = []
    for c in sorted(_children(pid)):
        cmd = _cmdline(c)
        if b"resource_tracker" in cmd:
            continue
        if b"forkserver" in cmd:
            pids += sorted(_children(c))
        elif b"spawn_main" in cmd:
            pids.append(c)
    return pids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(") ")[-1][0] != "Z"


def _wait_for(cond, limit_s: float = 120.0) -> None:
    # A guard against hanging forever, not a performance assertion.
    end = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.1)


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _kill_started_runs():
    """A test that fails before its `distdqn train` ends must not leave it running (it
    would load the machine for every later test)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)


def _start_train(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    """`distdqn train` in a subprocess (killed after the test if still running; a test in
    another module that calls this must use the `_kill_started_runs` fixture)."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*CLI, "train", "--run-dir", str(run), "--no-progress", "--actors", "2",
         "--set", "replay.min_replay_size=256", "--set", "eval.eval_episodes=5", *extra],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _STARTED.append(proc)
    return proc, run


def test_local_actors_started_early_are_stopped_if_the_learner_side_fails(tmp_path, monkeypatch):
    """A fresh local run starts its actors before building the learner side; if building
    it raises, the error reaches the caller and no actor process is left behind."""
    from distdqn.runtime import driver as driver_mod
    from distdqn.runtime import local

    def broken(*args, **kwargs):
        assert len(_spawned_pids(os.getpid())) == 2  # the actors are already running
        raise RuntimeError("learner side cannot be built")

    monkeypatch.setattr(driver_mod, "Driver", broken)
    cfg = small_cfg(total_env_steps=1000)
    with pytest.raises(RuntimeError, match="cannot be built"):
        local.run_local(cfg, spaces_for(cfg), tmp_path)
    assert _spawned_pids(os.getpid()) == []


@pytest.mark.slow
def test_local_learns_cartpole_past_200(tmp_path):
    from distdqn.runtime.local import run_local

    cfg = from_dict({"progress": False, "seed": 0, "total_env_steps": 60_000,
                     "eval": {"eval_period": 2500, "eval_episodes": 10, "target_return": 200}})
    (tmp_path / "r").mkdir()
    s = run_local(cfg, spaces_for(cfg), tmp_path / "r")
    assert s["final_eval_return"] >= 200, s
    assert s["accounting_ok"]
    # past the budget by at most what the 2 actors had in flight: pipe, inbox, a partial chunk
    assert s["updates"] > 0 and s["env_steps"] <= 60_000 + 2 * 3 * (cfg.actor.chunk_size + 8 * cfg.actor.n_step)


@pytest.mark.slow
def test_local_sigterm_leaves_no_orphans_and_a_checkpoint(tmp_path):
    proc, run = _start_train(tmp_path, "--total-env-steps", "10000000", "--set", "eval.target_return=null")
    _wait_for(lambda: len(_spawned_pids(proc.pid)) == 3)  # 2 actors and the evaluator
    kids = _descendants(proc.pid)
    _wait_for(lambda: (run / "metrics.csv").exists() and (run / "metrics.csv").read_text().count("\n") >= 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    # multiprocessing's resource tracker and fork server exit when they see the parent's pipe
    # close, and the server's children when they find themselves re-parented; give them a moment
    try:
        _wait_for(lambda: not [k for k in kids if _alive(k)], limit_s=10)
    except AssertionError:
        left = {k: Path(f"/proc/{k}/cmdline").read_bytes() for k in kids if _alive(k)}
        raise AssertionError(f"orphan processes remain: {left}") from None
    assert complete_checkpoints(run), "no checkpoint written"
    s = json.loads((run / "summary.json").read_text())
    assert s["stop_reason"] == "SIGTERM"
    assert s["produced"] == s["inserted"] + s["rejected"] + s["dropped"]
    assert s["dropped"] == 0  # a graceful stop inserts what was in flight


@pytest.mark.slow
def test_local_killed_actor_is_restarted(tmp_path):
    # Evaluation in line, so that every spawned child is an actor.
    proc, run = _start_train(tmp_path, "--total-env-steps", "40000", "--set", "eval.target_return=null",
                             "--set", "eval.separate_process=false")
    _wait_for(lambda: len(_spawned_pids(proc.pid)) == 2)
    _wait_for(lambda: (run / "metrics.csv").exists() and (run / "metrics.csv").read_text().count("\n") >= 2)
    victim = _spawned_pids(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    s = json.loads((run / "summary.json").read_text())
    assert s["actor_restarts"] >= 1
    assert s["env_steps"] >= 40000 and s["updates"] > 1000  # learning went on
    assert s["produced"] == s["inserted"] + s["rejected"] + s["dropped"]
    assert s["dropped"] == 0  # the chunks the killed actor had sent were kept


@pytest.mark.slow
def test_local_resume_continues_counters(tmp_path):
    proc, run = _start_train(tmp_path, "--total-env-steps", "6000", "--set", "eval.target_return=null")
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    first = json.loads((run / "summary.json").read_text())
    r = cli("train", "--resume", str(run), "--total-env-steps", "12000", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    second = json.loads((run / "summary.json").read_text())
    assert second["resumed_from"]
    assert second["env_steps"] >= 12000 and second["updates"] > first["updates"]


def _send_big(conn) -> None:
    import numpy as np

    conn.send(np.ones(4_000_000, dtype=np.float32))  # 16 MB: far more than a pipe buffer


def test_receiver_survives_actor_killed_mid_message():
    """An actor killed half-way through sending a chunk must not block the learner process."""
    import multiprocessing as mp
    import queue
    import threading

    from distdqn.runtime.local.actors import receive as _receive

    ctx = mp.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_send_big, args=(writer,), daemon=True)
    proc.start()
    writer.close()
    _wait_for(lambda: reader.poll(), limit_s=60)  # the message has started arriving
    time.sleep(0.3)
    proc.kill()
    proc.join()
    inbox: queue.Queue = queue.Queue(maxsize=2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _receive(reader, inbox, threading.Event(), threading.Event())
        except BaseException as exc:  # noqa: BLE001 - the assertion below reports it
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "receiver blocked on a half-written message"
    assert errors == [] and inbox.empty()


def test_evaluator_process_matches_in_line_evaluation_and_reports_its_death() -> None:
    """The local runtime's evaluator process (eval.separate_process) returns the same
    returns as an in-line evaluation with the same index and parameters; when it dies,
    it says so (the learner process then evaluates in line)."""
    import multiprocessing as mp

    import numpy as np

    from distdqn.program import build_evaluator, build_network
    from distdqn.core import flat_params
    from distdqn.runtime.local import EvalProcess

    cfg = small_cfg(**{"env.max_episode_steps": 60})
    spaces = spaces_for(cfg)
    params = flat_params(build_network(cfg, spaces))
    in_line = build_evaluator(cfg, spaces)
    in_line.evaluations = 3
    want = in_line.evaluate(params, 4)
    in_line.close()
    ev = EvalProcess(mp.get_context("spawn"), cfg, spaces)
    try:
        assert not ev.busy and ev.poll() is None
        ev.submit(3, params, 4, 1234)
        assert ev.busy
        got = None
        for _ in range(6000):  # the process imports torch and gymnasium first
            got = ev.poll()
            if got is not None:
                break
            time.sleep(0.01)
        assert got is not None and not ev.busy
        assert got.env_steps == 1234 and got.error is None and got.env_restarts == 0
        returns = got.returns
        np.testing.assert_array_equal(returns, want)
        ev._proc.kill()
        ev._proc.join(timeout=10)
        ev.submit(4, params, 4, 1300)
        assert ev.poll() is None
        assert not ev.alive and not ev.busy
    finally:
        ev.close()
