"""Gorila and sync topologies: in-process updaters, per-actor replay pools, local-runtime runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distdqn.config import from_dict
from distdqn.agents.dqn.spec import transition_chunk as TransitionChunk
from distdqn.program import build_parameter_server, build_replay, spaces_for
from distdqn.topologies import ApexUpdater, GorilaUpdater, SyncUpdater
from test_runtime import _kill_started_runs  # noqa: F401  (autouse: no `distdqn train` outlives its test)


def _cfg(preset: str, **learner):
    return from_dict({"preset": preset, "progress": False,
                      "replay": {"min_replay_size": 64, "samples_per_insert": 0},
                      "learner": {"batch_size": 32, **learner},
                      "eval": {"eval_episodes": 3, "eval_period": 0, "target_return": None}})


def _filled(cfg, n=512, actors=1, seed=0):
    rng = np.random.default_rng(seed)
    spaces = spaces_for(cfg)
    replay = build_replay(cfg, spaces)
    per = n // actors
    for a in range(actors):
        replay.insert(TransitionChunk(
            obs=rng.normal(size=(per, 4)).astype(np.float32), action=rng.integers(2, size=per),
            reward=rng.normal(size=per).astype(np.float32), discount=np.full(per, 0.97, np.float32),
            next_obs=rng.normal(size=(per, 4)).astype(np.float32), actor_id=a))
    return spaces, replay


def test_apex_step_learns_on_each_batch_of_one_draw_then_updates_priorities():
    """An apex step with batches_per_sample = 3 == one 3-batch draw, three learner steps on
    its batches in order, then one priority update with all their |TD errors|."""
    cfg = _cfg("apex", batches_per_sample=3, publish_period=4)
    spaces, replay_a = _filled(cfg, seed=2)
    _, replay_b = _filled(cfg, seed=2)
    ps = build_parameter_server(cfg, spaces)
    up = ApexUpdater(cfg, spaces, ps)
    assert up.can_step(replay_a)
    published = [up.step(replay_a) for _ in range(3)]
    assert up.updates == 9 and replay_a.samples == 9 * 32 and replay_a.sample_calls == 9
    assert published == [False, True, True]  # updates 3, 6 (crosses 4), 9 (crosses 8)
    from distdqn.program import build_learner

    ref = build_learner(cfg, spaces)
    for _ in range(3):
        batch = replay_b.sample(32, num_batches=3)
        td = [ref.learn(part).td_abs for part in batch.split(3)]
        replay_b.update_priorities(batch.keys, np.concatenate(td))
    assert np.array_equal(up.params(), ref.get_params())
    assert np.array_equal(replay_a.tree.leaves(), replay_b.tree.leaves())  # same priorities
    # the tree holds (|td| + eps)^alpha of the last step's keys
    r = cfg.replay
    last = batch.keys[-1]
    want = (abs(float(td[-1][-1])) + r.priority_epsilon) ** r.priority_exponent
    assert replay_a.tree[np.array([last % r.capacity])][0] == pytest.approx(want, rel=1e-6)


def test_gorila_round_staleness_pattern():
    """Learners pull at the start of a round; the k-th gradient of a round is k versions stale."""
    cfg = _cfg("gorila", num_learners=3)
    spaces, replay = _filled(cfg)
    ps = build_parameter_server(cfg, spaces)
    up = GorilaUpdater(cfg, spaces, ps)
    seen = []
    for _ in range(9):
        up.step(replay)
        seen.append(int(up.metrics["staleness"]))
    assert seen == [0, 1, 2] * 3
    assert ps.applied_updates == 9 and up.updates == 9


def test_gorila_drops_gradients_beyond_max_staleness():
    cfg = from_dict({"preset": "gorila", "learner": {"num_learners": 3, "batch_size": 32},
                     "replay": {"min_replay_size": 64, "samples_per_insert": 0},
                     "parameter_server": {"max_staleness": 1}})
    spaces, replay = _filled(cfg)
    ps = build_parameter_server(cfg, spaces)
    up = GorilaUpdater(cfg, spaces, ps)
    applied = [up.step(replay) for _ in range(6)]
    assert applied == [True, True, False] * 2
    assert ps.dropped_stale_gradients == 2 and ps.applied_updates == 4


def test_sync_allreduce_applies_the_mean_gradient():
    """SyncUpdater(allreduce) == one learner applying the mean of M batch gradients."""
    cfg = _cfg("sync", num_learners=2, sync_mode="allreduce")
    spaces, replay_a = _filled(cfg, seed=1)
    _, replay_b = _filled(cfg, seed=1)
    ps = build_parameter_server(cfg, spaces)
    up = SyncUpdater(cfg, spaces, ps)
    up.step(replay_a)
    from distdqn.program import build_learner

    ref = build_learner(cfg, spaces)
    grads = []
    for _ in range(2):
        batch = replay_b.sample(32)
        out = ref.compute_gradients(batch)
        replay_b.update_priorities(batch.keys, out.td_abs)  # as the updater does between batches
        grads.append(out.grads)
    ref.apply_gradients(torch.stack(grads).mean(dim=0))
    assert np.array_equal(up.params(), ref.get_params())


def test_sync_average_matches_formula():
    """After average_period rounds every learner holds (1/M) sum_i theta_i."""
    cfg = _cfg("sync", num_learners=2, sync_mode="average", average_period=2)
    spaces, replay = _filled(cfg, seed=2)
    up = SyncUpdater(cfg, spaces, build_parameter_server(cfg, spaces))
    up.step(replay)
    a, b = up.learners[0].get_params(), up.learners[1].get_params()
    assert not np.array_equal(a, b)  # one local step on different batches
    # second round: local steps, then the average
    before = []
    orig_learn = [lr.learn for lr in up.learners]
    for lr, learn in zip(up.learners, orig_learn):
        def wrapped(batch, _learn=learn, _lr=lr):
            out = _learn(batch)
            before.append(_lr.get_params())
            return out
        lr.learn = wrapped
    up.step(replay)
    expected = ((before[0].astype(np.float64) + before[1]) / 2).astype(np.float32)
    assert np.array_equal(up.learners[0].get_params(), expected)
    assert np.array_equal(up.learners[1].get_params(), expected)


def test_per_actor_pools_sample_in_proportion_to_size():
    cfg = from_dict({"replay": {"placement": "per_actor", "min_replay_size": 128, "samples_per_insert": 0}})
    spaces = spaces_for(cfg)
    replay = build_replay(cfg, spaces)
    for actor, n in ((0, 100), (1, 300)):
        replay.insert(TransitionChunk(
            obs=np.full((n, 4), actor, np.float32), action=np.zeros(n, np.int64), reward=np.zeros(n, np.float32),
            discount=np.ones(n, np.float32), next_obs=np.zeros((n, 4), np.float32), actor_id=actor))
    assert len(replay) == 400
    share = np.mean([replay.sample(128).obs[:, 0].mean().item() for _ in range(200)])
    assert abs(share - 0.75) < 0.02
    b = replay.sample(64)
    replay.update_priorities(b.keys, np.full(64, 5.0))  # keys route back to their pools
    assert replay.pools[0].max_priority > 1.0 or replay.pools[1].max_priority > 1.0


@pytest.mark.parametrize("preset,extra", [("gorila", {}), ("sync", {"learner.sync_mode": "average"}),
                                          ("apex", {"replay.placement": "per_actor"})])
def test_serial_topologies_run_and_account(tmp_path, preset, extra):
    from distdqn.config import replace
    from distdqn.runtime.serial import run_serial

    cfg = from_dict({"preset": preset, "runtime": "serial", "total_env_steps": 2500, "progress": False,
                     "replay": {"min_replay_size": 256}, "learner": {"batch_size": 64},
                     "eval": {"eval_episodes": 3, "eval_period": 0, "target_return": None}})
    cfg = replace(cfg, **extra)
    s = run_serial(cfg, spaces_for(cfg), tmp_path)
    assert s["updates"] > 20 and s["accounting_ok"]


@pytest.mark.slow
@pytest.mark.parametrize("preset,extra", [("gorila", {}), ("sync", {}), ("sync", {"sync_mode": "average"})])
def test_local_multi_learner_learns(tmp_path, preset, extra):
    from distdqn.runtime.local import run_local

    cfg = from_dict({"preset": preset, "seed": 0, "total_env_steps": 60_000, "progress": False,
                     "learner": {"num_learners": 2, **extra},
                     "eval": {"eval_period": 2500, "eval_episodes": 10, "target_return": 150}})
    s = run_local(cfg, spaces_for(cfg), tmp_path)
    assert s["final_eval_return"] >= 150, s
    assert s["accounting_ok"] and s["updates"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["gorila", "sync"])
def test_local_colocated_workers_learn(tmp_path, preset):
    from distdqn.runtime.local import run_local

    cfg = from_dict({"preset": preset, "colocate": True, "seed": 0, "total_env_steps": 60_000, "progress": False,
                     "learner": {"num_learners": 2}, "actor": {"num_actors": 2},
                     "eval": {"eval_period": 2500, "eval_episodes": 10, "target_return": 150}})
    s = run_local(cfg, spaces_for(cfg), tmp_path)
    assert s["final_eval_return"] >= 150, s
    assert s["accounting_ok"]


@pytest.mark.slow
def test_local_gorila_killed_learner_is_restarted(tmp_path):
    import json
    import os
    import signal

    from test_runtime import _spawned_pids, _start_train, _wait_for

    # Evaluation in line, so that every spawned child is an actor or a learner.
    proc, run = _start_train(tmp_path, "--preset", "gorila", "--learners", "2", "--total-env-steps", "30000",
                             "--set", "eval.target_return=null", "--set", "eval.separate_process=false")

    def learners():
        return _spawned_pids(proc.pid)

    _wait_for(lambda: len(learners()) == 4)  # 2 actors + 2 learners
    _wait_for(lambda: (run / "metrics.csv").exists() and (run / "metrics.csv").read_text().count("\n") >= 3)
    # learners are started before actors: the two lowest pids
    victim = sorted(learners())[0]
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    s = json.loads((run / "summary.json").read_text())
    assert s["learner_restarts"] >= 1
    assert s["env_steps"] >= 30000 and s["accounting_ok"]


def test_sync_replay_rate_limiter_uses_the_round_as_its_unit():
    """Regression: a sync round samples M x B. With the limiter's unit left at B, this state
    (seen in a real run) allowed neither an insert nor a round: a deadlock."""
    cfg = from_dict({"preset": "sync", "learner": {"num_learners": 2, "batch_size": 64}})
    replay = build_replay(cfg, spaces_for(cfg))
    rl = replay.rate_limiter
    rl.inserts, rl.samples = 1036, 1024
    size = 1036
    unit = 2 * 64
    assert rl.can_insert(64, size) or rl.can_sample(unit, size)


def test_remote_learners_treat_a_broken_pipe_as_a_dead_learner():
    """A learner can die between the check and the send (a fork server's child is reaped a
    moment later): the send's BrokenPipeError marks it dead for the restart path instead of
    ending the run."""
    from distdqn.runtime.local.learners import RemoteLearners, _Learner

    class BrokenConn:
        def send(self, obj):
            raise BrokenPipeError(32, "Broken pipe")

    class AliveProc:
        def is_alive(self):
            return True

    cfg = from_dict({"preset": "gorila", "learner": {"num_learners": 2}, "replay": {"min_replay_size": 64}})
    replay = build_replay(cfg, spaces_for(cfg))
    rng = np.random.default_rng(0)
    n = 200
    replay.insert(TransitionChunk(obs=rng.standard_normal((n, 4)).astype(np.float32), action=np.zeros(n, np.int64),
                                  reward=np.ones(n, np.float32), discount=np.full(n, 0.99, np.float32),
                                  next_obs=rng.standard_normal((n, 4)).astype(np.float32), actor_id=0))
    remote = object.__new__(RemoteLearners)
    remote.cfg, remote.sync, remote.m = cfg, False, 2
    good, bad = _Learner(0), _Learner(1)
    sent = []
    good.batch_conn = type("Conn", (), {"send": lambda self, obj: sent.append(obj)})()
    bad.batch_conn = BrokenConn()
    good.proc = bad.proc = AliveProc()
    remote.learners = [good, bad]
    assert remote.feed(replay) == 2  # IN_FLIGHT batches to the good one, none counted for the broken one
    assert len(sent) == 2 and good.in_flight == 2 and bad.in_flight == 0 and bad.broken
    assert remote.dead() == [1]
