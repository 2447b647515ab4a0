"""R2D2: value rescaling, sequences, stored state and burn-in, n-step targets, mixed
priorities (hand-computed values), and the agent end to end in the serial runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _util import config_with

from distdqn.agents.r2d2.loss import mixed_priorities, n_step_targets, r2d2_loss, trained_steps, unroll
from distdqn.agents.r2d2.network import R2D2Network
from distdqn.agents.r2d2.rescale import h, h_inv
from distdqn.agents.r2d2.sequence import SequenceAdder, sequence_spec
from distdqn.core import Batch


def test_rescaling_round_trips_over_a_wide_range():
    x = torch.cat([torch.linspace(-1e4, 1e4, 20001, dtype=torch.float64), torch.tensor([0.0, 1e-6, -1e-6])])
    np.testing.assert_allclose(h_inv(h(x)).numpy(), x.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(h(h_inv(x)).numpy(), x.numpy(), rtol=1e-6, atol=1e-6)
    # by hand: h(3) = sqrt(4) - 1 + 3e-3, h(-8) = -(3 - 1) - 8e-3
    assert float(h(torch.tensor(3.0, dtype=torch.float64))) == pytest.approx(1.003)
    assert float(h(torch.tensor(-8.0, dtype=torch.float64))) == pytest.approx(-2.008)


def test_priorities_are_eta_mixed():
    td = torch.tensor([[1.0, 3.0, 2.0, 9.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    p = mixed_priorities(td, mask, eta=0.9)
    # row 0: max 3, mean 2 -> 0.9 * 3 + 0.1 * 2; row 1: max 4, mean 2 -> 3.6 + 0.2
    np.testing.assert_allclose(p.numpy(), [2.9, 3.8], rtol=1e-6)
    assert float(mixed_priorities(td, torch.zeros_like(mask), 0.9)[0]) == 0.0


def _adder(envs=1, steps=4, period=2, lstm=3):
    return SequenceAdder(envs, steps, period, sequence_spec((2,), np.float32, steps, lstm))


def _step(adder, t, terminated=False, truncated=False, envs=1):
    obs = np.full((envs, 2), float(t), np.float32)
    nxt = np.full((envs, 2), float(t + 1), np.float32)
    adder.add(obs, np.full(envs, t % 2), np.full(envs, float(t)), nxt, np.full(envs, terminated),
              np.full(envs, truncated), h=np.full((envs, 3), float(t), np.float32),
              c=np.full((envs, 3), -float(t), np.float32), prev_action=np.full(envs, (t - 1) % 2 if t else -1),
              prev_reward=np.full(envs, float(t - 1) if t else 0.0))


def test_sequences_overlap_by_period_and_store_the_state_at_their_start():
    a = _adder()
    for t in range(6):
        _step(a, t)
    data, prio = a.pop_items()
    assert prio is None and data["obs"].shape == (2, 5, 2)  # starts 0 and 2; the start at 4 is still open
    np.testing.assert_array_equal(data["obs"][0, :, 0], [0, 1, 2, 3, 4])  # 4 steps + the obs after them
    np.testing.assert_array_equal(data["obs"][1, :, 0], [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(data["h0"][:, 0], [0, 2]) and np.testing.assert_array_equal(data["c0"][:, 0], [0, -2])
    np.testing.assert_array_equal(data["prev_action"][0], [-1, 0, 1, 0, 1])  # the last: action of step 3
    np.testing.assert_array_equal(data["prev_reward"][1], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(data["mask"], np.ones((2, 4)))
    assert a.open_sequences() == 1


def test_a_sequence_never_spans_two_episodes():
    a = _adder()
    for t in range(3):
        _step(a, t, terminated=(t == 2))
    for t in range(10, 12):
        _step(a, t)
    data, _ = a.pop_items()
    # the episode's starts 0 and 2, both cut at its end (step 2) and padded
    assert len(data["mask"]) == 2
    np.testing.assert_array_equal(data["mask"], [[1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(data["terminated"], [[0, 0, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(data["obs"][0, :, 0], [0, 1, 2, 3, 0])  # 3 = the final observation
    np.testing.assert_array_equal(data["obs"][1, :, 0], [2, 3, 0, 0, 0])
    assert not (data["obs"][..., 0] >= 10).any()  # nothing of the next episode
    assert a.open_sequences() == 1  # the new episode's first sequence


def _batch(net, steps=6, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = {"obs": torch.randn(b, steps + 1, 2, generator=g), "prev_action": torch.randint(0, 2, (b, steps + 1), generator=g),
         "prev_reward": torch.randn(b, steps + 1, generator=g), "action": torch.randint(0, 2, (b, steps), generator=g),
         "reward": torch.randn(b, steps, generator=g), "terminated": torch.zeros(b, steps),
         "mask": torch.ones(b, steps), "h0": torch.randn(b, net.lstm_size, generator=g),
         "c0": torch.randn(b, net.lstm_size, generator=g)}
    return Batch(data=d, keys=np.arange(b), weights=torch.ones(b))


def test_the_stored_state_is_restored_before_the_burn_in_and_the_burn_in_gets_no_gradient():
    torch.manual_seed(0)
    net = R2D2Network((2,), 2, "mlp", (8,), 5)
    batch = _batch(net)
    d = batch.data
    # by hand: step the network from (h0, c0) through every input, keep those after the burn-in
    state, outs = (d["h0"], d["c0"]), []
    for t in range(7):
        q, state = net(d["obs"][:, t : t + 1], d["prev_action"][:, t : t + 1], d["prev_reward"][:, t : t + 1], state)
        outs.append(q)
    want = torch.cat(outs, dim=1)
    got = unroll(net, batch, burn_in=2)
    torch.testing.assert_close(got, want)
    with torch.no_grad():  # the target network's pass: one unroll, same values
        torch.testing.assert_close(unroll(net, batch, burn_in=2), want)
    # a different stored state changes the result: it is used
    other = Batch(data=dict(d, h0=torch.zeros_like(d["h0"])), keys=batch.keys, weights=batch.weights)
    assert not torch.allclose(unroll(net, other, 2), got)
    # no gradient reaches the burn-in's inputs of a sequence that starts inside its episode;
    # one that starts at its episode's start (no previous action) is trained from step 0
    prev = d["prev_action"].clone()
    prev[1, 0] = -1
    obs = d["obs"].clone().requires_grad_(True)
    started = Batch(data=dict(d, obs=obs, prev_action=prev), keys=batch.keys, weights=batch.weights)
    unroll(net, started, 2).sum().backward()
    assert obs.grad[[0, 2], :2].abs().sum() == 0 and obs.grad[:, 2:].abs().sum() > 0
    assert obs.grad[1, :2].abs().sum() > 0
    np.testing.assert_array_equal(trained_steps(started, 2).numpy(), [[0, 0, 1, 1, 1, 1], [1] * 6, [0, 0, 1, 1, 1, 1]])


def test_n_step_targets_by_hand():
    # one sequence of 4 trained steps, 2 actions; n = 2, gamma 0.5; rescaling eps small
    eps = 1e-3
    q_online = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    q_target = torch.tensor([[[5.0, 6.0], [7.0, 8.0], [9.0, 10.0], [11.0, 12.0], [13.0, 14.0]]])
    reward = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    terminated = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the episode terminated at step 2
    y = n_step_targets(q_online, q_target, reward, terminated, mask, n_step=2, gamma=0.5, eps=eps)
    v = lambda t, a: float(h_inv(q_target[0, t, a], eps))  # noqa: E731
    want = [1 + 0.5 * 2 + 0.25 * v(2, 1),  # bootstrap at s_2 with a* = argmax online = 1
            2 + 0.5 * 3,  # the window reaches the terminal step: no bootstrap
            3.0]  # the terminal step itself
    np.testing.assert_allclose(y[0, :3].numpy(), h(torch.tensor(want)).numpy(), rtol=1e-5)


def test_a_truncated_episode_bootstraps_from_its_final_observation():
    eps = 1e-3
    q = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [3.0, 2.0]]])  # steps 0, 1 and the final observation
    reward = torch.tensor([[1.0, 1.0]])
    y = n_step_targets(q, q, reward, torch.zeros(1, 2), torch.ones(1, 2), n_step=3, gamma=0.9, eps=eps)
    boot = float(h_inv(torch.tensor(3.0), eps))  # argmax at the final observation is action 0
    np.testing.assert_allclose(y[0].numpy(), h(torch.tensor([1 + 0.9 + 0.81 * boot, 1 + 0.9 * boot])).numpy(),
                               rtol=1e-5)


def test_loss_gives_one_priority_per_sequence_and_a_gradient():
    torch.manual_seed(1)
    net, tgt = R2D2Network((2,), 2, "mlp", (8,), 5), R2D2Network((2,), 2, "mlp", (8,), 5)
    out = r2d2_loss(net, tgt, _batch(net), burn_in=2, n_step=3, gamma=0.99, eta=0.9, eps=1e-3)
    out.loss.backward()
    assert out.priorities.shape == (3,) and (out.priorities > 0).all()
    assert all(p.grad is not None for p in net.parameters())


def test_serial_r2d2_runs_on_masked_cartpole(tmp_path):
    from test_runtime import run_serial_cfg

    cfg = config_with({"preset": "r2d2"}, runtime="serial", total_env_steps=3000, progress=False,
                      **{"env.id": "distdqn/CartPoleMasked-v0", "r2d2.sequence_length": 8, "r2d2.sequence_period": 4,
                         "r2d2.burn_in": 4, "r2d2.lstm_size": 16, "network.hidden_sizes": [16],
                         "replay.min_replay_size": 64, "eval.eval_period": 0, "eval.eval_episodes": 2})
    a = run_serial_cfg(cfg, tmp_path / "a")
    b = run_serial_cfg(cfg, tmp_path / "b")
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()
    assert a["env_steps"] >= 3000 and a["updates"] > 0 and a["accounting_ok"] and a["final_eval_return"] > 0


def test_serial_r2d2_resume_is_bitwise_exact(tmp_path):
    """Stop at k, resume to 2k: the sequences, stored states and recurrent acting state are
    restored, so the parameters equal an uninterrupted run's, bit for bit."""
    from test_runtime import final_params, run_serial_cfg

    def cfg(steps):
        return config_with({"preset": "r2d2"}, runtime="serial", total_env_steps=steps, progress=False,
                           checkpoint_replay=True, checkpoint_period=0,
                           **{"env.id": "distdqn/CartPoleMasked-v0", "r2d2.sequence_length": 8,
                              "r2d2.sequence_period": 4, "r2d2.burn_in": 4, "r2d2.lstm_size": 16,
                              "network.hidden_sizes": [16], "replay.min_replay_size": 64,
                              "replay.samples_per_insert": 4.0, "eval.eval_period": 0, "eval.eval_episodes": 1})

    full = run_serial_cfg(cfg(3000), tmp_path / "full")
    run_serial_cfg(cfg(1500), tmp_path / "part")
    resumed = run_serial_cfg(cfg(3000), tmp_path / "part", resume=True)
    assert full["env_steps"] == resumed["env_steps"] and full["updates"] == resumed["updates"] > 0
    assert torch.equal(final_params(tmp_path / "full"), final_params(tmp_path / "part"))


def test_r2d2_learner_bench_row_measures_both_loops(tmp_path):
    from distdqn.bench.r2d2_learning import measure_r2d2_learning
    from distdqn.program import spaces_for

    cfg = config_with({"preset": "r2d2"}, progress=False,
                      **{"env.id": "distdqn/CartPoleMasked-v0", "r2d2.sequence_length": 8, "r2d2.sequence_period": 4,
                         "r2d2.burn_in": 4, "r2d2.lstm_size": 16, "network.hidden_sizes": [16],
                         "replay.min_replay_size": 64, "learner.batch_size": 8})
    got = measure_r2d2_learning(cfg, spaces_for(cfg), 0.4, tmp_path)
    assert got["ups"] > 0 and got["ceiling_ups"] > 0 and got["sequence_steps"] == 12 and got["replay_size"] >= 64


def test_a_replay_larger_than_the_machine_is_refused_before_anything_starts():
    from distdqn.config import ConfigError
    from distdqn.program import check_replay_memory, spaces_for

    cfg = config_with({"preset": "r2d2"}, **{"env.id": "distdqn/CartPoleMasked-v0"})
    per_item = check_replay_memory(cfg, spaces_for(cfg)) // cfg.replay.capacity
    # obs [121, 2] f32, prev_action [121] i64, prev_reward [121] f32, action [120] i64, reward, terminated,
    # mask [120] f32, h0 and c0 [512] f32
    assert per_item == 121 * 8 + 121 * 8 + 121 * 4 + 120 * 8 + 3 * 120 * 4 + 2 * 512 * 4
    with pytest.raises(ConfigError, match=r"replay.capacity=20000; allowed: at most 12,042 here"):
        check_replay_memory(cfg, spaces_for(cfg), memory_bytes=2**27)


def test_atari_sequences_store_each_frame_once_and_rebuild_the_stacks_the_actor_saw():
    """Twin actors from one seed on frame stacks (``distdqn/StackedFrames-v0``: 84x84 frames
    that encode (episode, step), episodes of 1-12 steps): one sends whole sequences, one
    frames and ids. Every sequence sampled from the frame-deduplicating replay holds, at
    each real step and at the bootstrap observation, the stacks the first one sent, from
    one episode; and the replay keeps about one frame per env step (a whole-stack
    sequence of 13 stacks of 4 frames every 4 steps keeps 13 per env step)."""
    from test_frame_replay import assert_one_episode

    from distdqn.config import replace
    from distdqn.program import build_actor, build_replay, spaces_for

    base = config_with({"preset": "r2d2"}, **{"env.id": "distdqn/StackedFrames-v0", "env.envs_per_actor": 3,
                                              "r2d2.sequence_length": 8, "r2d2.sequence_period": 4,
                                              "r2d2.burn_in": 4, "r2d2.lstm_size": 16, "network.kind": "mlp",
                                              "network.hidden_sizes": [16], "actor.chunk_size": 4,
                                              "replay.capacity": 120, "replay.min_replay_size": 32})
    spaces = spaces_for(base)
    whole = build_actor(replace(base, **{"replay.frame_dedup": "off"}), spaces, 0)
    compact = build_actor(replace(base, **{"replay.frame_dedup": "on"}), spaces, 0)
    replay = build_replay(replace(base, **{"replay.frame_dedup": "on"}), spaces)
    # sized by the period (4 new frames a sequence), not the sequence's 13 stacks, plus the
    # frames all 2 x 3 envs write while one fills: its 12 steps and 3 earlier frames, two
    # chunk waits of 6 steps, a period
    assert replay.storage.frame_capacity == 120 * 4 + 1024 + (12 + 4 + 2 * 6 + 4) * 6
    expected, env_steps, rng = {}, 0, np.random.default_rng(0)
    for step in range(520):
        a, b = whole.step(), compact.step()
        assert (a is None) == (b is None)
        if a is None:
            continue
        assert b.compact and "obs" not in b.data and b.data["obs_frame"].shape == (len(a), 13)
        env_steps += a.env_steps
        for k, i in zip(replay.insert(b).tolist(), range(len(a))):
            expected[k] = {name: a.data[name][i] for name in a.data}
        if len(replay) >= 32 and step % 4 == 0:
            batch = replay.sample(32)
            for row, k in enumerate(batch.keys.tolist()):
                want = expected[k]
                real = int(want["mask"].sum()) + 1  # the real steps and the observation after them
                got = batch.data["obs"][row].numpy()
                np.testing.assert_array_equal(got[:real], want["obs"][:real])
                assert_one_episode(got[:real])
                for name in ("action", "reward", "mask", "prev_action", "h0"):
                    np.testing.assert_array_equal(batch.data[name][row].numpy(), want[name], err_msg=name)
            replay.update_priorities(batch.keys, rng.exponential(1.0, 32))
    st = replay.storage
    assert replay.inserted > 120 and st.frames_written > st.frame_capacity  # both rings wrapped
    frame = 84 * 84
    per_step = (st.frames_written * (frame + 8)) / env_steps  # every frame written, per env step
    assert per_step < 1.6 * frame  # one frame per step and one per (short) episode's reset
    whole_per_step = 13 * 4 * frame / 4  # what whole-stack sequences every 4 steps keep
    assert whole_per_step / per_step > 8


def test_sequence_replay_bench_row_reports_bytes_per_env_step():
    from distdqn.bench.sequence_replay import measure_sequence_replay
    from distdqn.program import spaces_for

    cfg = config_with({"preset": "r2d2"}, **{"env.id": "distdqn/StackedFrames-v0", "env.envs_per_actor": 2,
                                             "r2d2.sequence_length": 8, "r2d2.sequence_period": 4, "r2d2.burn_in": 4,
                                             "r2d2.lstm_size": 16, "network.kind": "mlp", "network.hidden_sizes": [16],
                                             "actor.chunk_size": 4})
    got = measure_sequence_replay(cfg, spaces_for(cfg), sequences=40)
    frame = 84 * 84
    assert got["sequences"] >= 40 and got["frame_bytes"] == frame and got["env_steps"] > 0
    # frames: one per env step and one per episode start (episodes of 1-12 steps here)
    assert got["frames_stored"] > got["env_steps"] and frame < got["bytes_per_env_step"] < 1.6 * frame
    assert got["whole_bytes_per_env_step"] > 5 * got["bytes_per_env_step"]


@pytest.mark.parametrize("sequences", [False, True])
def test_a_compact_chunk_of_frames_and_no_items_is_stored(sequences):
    """Its items were all refused (non-finite), its frames still arrive: later items of the
    stream may name them."""
    from distdqn.agents.dqn.spec import transition_spec
    from distdqn.core import Chunk, FrameBlock
    from distdqn.replay import FrameStorage

    spec = sequence_spec((4, 3, 3), "uint8", 2, 4, frame_dedup=True) if sequences else \
        transition_spec((4, 3, 3), "uint8", frame_dedup=True)
    st = FrameStorage(8, spec)
    frames = FrameBlock(frames=np.ones((5, 3, 3), np.uint8), prev=np.arange(5, dtype=np.int64), start=0, stream=0)
    data = {name: np.zeros((0, *f.shape), f.np_dtype) for name, f in spec.fields if f.frames is None}
    data.update({f.frames: np.zeros((0, *f.shape[: f.stack_axis]), np.int64) for _, f in spec.frame_fields()})
    keys = st.add(Chunk(data=data, spec=spec, frames=frames))
    assert keys.shape == (0,) and len(st) == 0 and st.frames_written == 5


def test_sequences_too_long_for_frame_dedup_are_refused_naming_the_key():
    from distdqn.config import ConfigError
    from distdqn.program import frame_dedup_enabled, spaces_for

    cfg = config_with({"preset": "r2d2"}, **{"env.id": "distdqn/StackedFrames-v0", "r2d2.sequence_length": 240})
    with pytest.raises(ConfigError, match="r2d2.sequence_length=240.*replay.frame_dedup=off"):
        frame_dedup_enabled(cfg, spaces_for(cfg))
    assert not frame_dedup_enabled(config_with({"preset": "r2d2"}, **{"env.id": "distdqn/StackedFrames-v0",
                                                                     "r2d2.sequence_length": 240,
                                                                     "replay.frame_dedup": "off"}),
                                   spaces_for(cfg))
