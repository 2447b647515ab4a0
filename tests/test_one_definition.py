"""Each topology's learning step exists once: the serial runtime and the local runtime (its
learner-process side included: batch codec, the learner service, the replies) call the same
definition, so the same seeded topology makes the same learner calls in the same order.

Learners are recording stand-ins (a real learner whose calls are logged). The local runtime
runs in this process: its learner processes are :class:`LearnerService` objects fed through
the runtime's own :class:`RemoteLearners` scheduling, with a transport that delivers each
reply before the next batch leaves (so that the order is deterministic).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distdqn.agents.dqn.spec import transition_chunk
from distdqn.config import from_dict
from distdqn.program import build_learner, spaces_for
from distdqn.roles.learner import Learner
from distdqn.runtime.driver import Driver
from distdqn.runtime.local import learners as learners_mod
from distdqn.runtime.local.learners import LearnerService, RemoteLearners
from distdqn.runtime.local.runtime import LocalRuntime
from distdqn.runtime.serial import SerialRuntime
from distdqn.topologies import apex, gorila, sync

STEPS = 12


class RecordingLearner:
    """A real learner whose calls are logged to ``log`` as ``(name, detail)``."""

    def __init__(self, inner: Learner, log: list):
        self._inner, self._log = inner, log

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def learn(self, batch):
        self._log.append(("learn", tuple(batch.keys.tolist())))
        return self._inner.learn(batch)

    def compute_gradients(self, batch):
        self._log.append(("compute_gradients", tuple(batch.keys.tolist())))
        return self._inner.compute_gradients(batch)

    def apply_gradients(self, grads):
        self._log.append(("apply_gradients", round(float(np.asarray(grads).sum()), 4)))
        return self._inner.apply_gradients(grads)

    def set_params(self, flat):
        self._log.append(("set_params", round(float(np.asarray(flat).sum()), 4)))
        return self._inner.set_params(flat)

    def set_target_params(self, flat):
        self._log.append(("set_target_params", round(float(np.asarray(flat).sum()), 4)))
        return self._inner.set_target_params(flat)


def _recording(monkeypatch, log: list) -> None:
    def build(cfg, spaces):
        return RecordingLearner(build_learner(cfg, spaces), log)

    for mod in (apex, gorila, sync, learners_mod):
        monkeypatch.setattr(mod, "build_learner", build)


def _cfg(topology: str, runtime: str):
    return from_dict({"preset": topology, "runtime": runtime, "seed": 3, "progress": False,
                      "replay": {"min_replay_size": 128, "samples_per_insert": 0, "capacity": 2000},
                      "learner": {"batch_size": 16, "num_learners": 1, "publish_period": 2,
                                  "target_update_period": 3},
                      "eval": {"eval_period": 0, "target_return": None}})


def _fill(replay) -> None:
    rng = np.random.default_rng(7)
    n = 512
    replay.insert(transition_chunk(obs=rng.standard_normal((n, 4)).astype(np.float32),
                                   action=rng.integers(2, size=n), reward=rng.standard_normal(n).astype(np.float32),
                                   discount=np.full(n, 0.97, np.float32),
                                   next_obs=rng.standard_normal((n, 4)).astype(np.float32),
                                   priority=rng.exponential(size=n).astype(np.float32)))


def _serial(topology: str, tmp: Path, monkeypatch) -> list:
    log: list = []
    _recording(monkeypatch, log)
    cfg = _cfg(topology, "serial")
    rt = SerialRuntime(cfg, spaces_for(cfg))
    _fill(rt.parts.replay)
    up, replay = rt.parts.updater, rt.parts.replay
    while up.updates < STEPS:
        assert up.can_step(replay)
        up.step(replay)
    rt.close()
    return log


class InProcessLearners(RemoteLearners):
    """The runtime's learner processes as :class:`LearnerService` objects in this process;
    each reply is handled by the runtime before the next batch is sent."""

    def __init__(self, *args, on_reply, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_reply = on_reply

    def _start(self, lr, init_file, initial):
        lr.service = LearnerService(lr.rank, self.cfg, self.spaces, self.params, self.target, init_file, initial)

    def _send(self, lr, batch) -> bool:
        msg = learners_mod.batch_to_numpy(batch)
        self.on_reply(lr.service.handle(msg))
        lr.in_flight += 1  # as the pipe would hold it; results() takes it back
        return True

    def results(self) -> list:
        for lr in self.learners:
            lr.in_flight = 0
        return []

    def stop(self, grace_s: float = 10.0) -> None:
        for lr in self.learners:
            lr.service.close()
        self._tmp.cleanup()


def _local(topology: str, tmp: Path, monkeypatch) -> list:
    log: list = []
    _recording(monkeypatch, log)
    cfg = _cfg(topology, "local")
    spaces = spaces_for(cfg)
    rt = LocalRuntime(cfg, spaces)
    rt.build()
    _fill(rt.parts.replay)
    driver = Driver(cfg, spaces, tmp, rt, resume=False)
    rt.driver = driver
    ps = rt.parts.ps
    rt.shared.write(ps.version, rt.current_params())
    if rt.remote_learning:
        from distdqn.runtime.local.shared import SharedParams

        if ps.gradient_mode:
            rt.target_shared = SharedParams(rt.ctx, ps.num_params)
            rt.target_shared.write(*ps.get_target())
        rt.remote = InProcessLearners(rt.ctx, cfg, spaces, rt.shared, rt.target_shared, on_reply=rt._handle_reply)
        rt.remote.start(rt.current_params())
        log.clear()  # a learner process starts from the initial parameters: not part of a step
    try:
        while driver.updates < STEPS:
            assert rt.pump()
    finally:
        if rt.remote is not None:
            rt.remote.stop()
        driver.metrics.close()
    return log


@pytest.mark.parametrize("topology", ["apex", "gorila", "sync"])
def test_serial_and_local_make_the_same_learner_calls(tmp_path, monkeypatch, topology):
    serial = _serial(topology, tmp_path / "s", monkeypatch)
    (tmp_path / "l").mkdir()
    local = _local(topology, tmp_path / "l", monkeypatch)
    n = min(len(serial), len(local))
    assert n >= STEPS  # every update is a learner call; pulls and applies add more
    assert local[:n] == serial[:n]
