"""The CUDA paths: a learner on the GPU against the same learner on the CPU, checkpoints
written from GPU state and read on a CPU-only machine, and the serial and local runtimes
with ``learner.device=cuda``. Skipped where no CUDA device is present (CI has none; run
them on a GPU machine)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _util import config_with, torch_roundtrip

from distdqn.config import LearnerConfig, NetworkConfig, from_dict
from distdqn.agents.dqn.spec import transition_batch as SampledBatch
from distdqn.core import flat_params
from distdqn.agents.dqn.networks import make_network
from distdqn.program import spaces_for
from distdqn.roles.learner import Learner
from distdqn.roles.optim import FlatOptimizer, make_optimizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def _net(seed: int = 0, dueling: bool = False, hidden: tuple[int, ...] = (64, 64)) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_network(NetworkConfig(kind="mlp", hidden_sizes=hidden, dueling=dueling), (4,), 2)


def _cfg(**kw) -> LearnerConfig:
    base = {"batch_size": 32, "learning_rate": 1e-3, "device": "cuda", "target_update_period": 3}
    base.update(kw)
    return LearnerConfig(**base)


def _batch(seed: int, b: int = 32) -> SampledBatch:
    g = torch.Generator().manual_seed(seed)
    return SampledBatch(obs=torch.randn(b, 4, generator=g), action=torch.randint(0, 2, (b,), generator=g),
                        reward=torch.randn(b, generator=g), discount=torch.full((b,), 0.97),
                        next_obs=torch.randn(b, 4, generator=g), weights=torch.rand(b, generator=g),
                        keys=np.arange(b, dtype=np.int64))


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_cuda_learner_tracks_the_cpu_learner(optimizer: str) -> None:
    """Same start, same batches: the GPU learner's TD errors, metrics, parameters and target
    stay within float32 rounding of the CPU learner's over 8 updates (target copies at 3, 6)."""
    cpu = Learner(_cfg(optimizer=optimizer, device="cpu"), _net(dueling=True), CPU)
    gpu = Learner(_cfg(optimizer=optimizer), _net(dueling=True), CUDA)
    assert gpu._flat.device.type == "cuda" and gpu.optimizer.fused == (optimizer == "adam")
    np.testing.assert_array_equal(cpu.get_params(), gpu.get_params())
    for k in range(8):
        oc, og = cpu.learn(_batch(k)), gpu.learn(_batch(k))
        assert og.td_abs.dtype == np.float32 and og.td_abs.shape == (32,)
        np.testing.assert_allclose(og.td_abs, oc.td_abs, rtol=1e-4, atol=1e-5)
        for key in ("td_loss", "q_mean", "grad_norm"):
            assert og.metrics[key] == pytest.approx(oc.metrics[key], rel=1e-4, abs=1e-6), key
    np.testing.assert_allclose(gpu.get_params(), cpu.get_params(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gpu.get_target_params(), cpu.get_target_params(), rtol=1e-4, atol=1e-5)
    assert not np.array_equal(gpu.get_params(), flat_params(_net(dueling=True)))  # it learned


def test_cuda_gradients_round_trip_and_set_params() -> None:
    """compute_gradients + apply_gradients on the GPU = learn (bit for bit on the same device);
    the gradient comes back as a CPU tensor; set_params takes a CPU vector."""
    a = Learner(_cfg(), _net(), CUDA)
    b = Learner(_cfg(), _net(), CUDA)
    for k in range(3):
        a.learn(_batch(k))
        out = b.compute_gradients(_batch(k))
        assert out.grads.device.type == "cpu" and out.grads.dtype == torch.float32
        b.apply_gradients(out.grads)
    np.testing.assert_array_equal(a.get_params(), b.get_params())
    b.set_params(np.zeros_like(a.get_params()))
    assert float(b._flat.detach().abs().sum()) == 0.0 and b._flat.device.type == "cuda"


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_cuda_flat_optimizer_matches_torch_optim(optimizer: str) -> None:
    """On the GPU too, FlatOptimizer is torch.optim's optimizer bit for bit."""
    cfg = _cfg(optimizer=optimizer)
    rng = torch.Generator().manual_seed(4)
    start = torch.randn(1000, generator=rng)
    grads = [torch.randn(1000, generator=rng).to(CUDA) for _ in range(5)]
    ref, flat = torch.nn.Parameter(start.clone().to(CUDA)), torch.nn.Parameter(start.clone().to(CUDA))
    ref_opt, opt = make_optimizer(cfg, [ref]), FlatOptimizer(cfg, flat)
    for g in grads:
        ref.grad, flat.grad = g.clone(), g.clone()
        ref_opt.step()
        opt.step()
    assert torch.equal(ref, flat)


def test_cuda_checkpoint_state_loads_into_a_cpu_learner() -> None:
    """A GPU learner's state_dict, saved and read back onto the CPU (what a checkpoint read on
    a machine without a GPU does), continues on a CPU learner within rounding."""
    gpu = Learner(_cfg(), _net(), CUDA)
    for k in range(4):
        gpu.learn(_batch(k))
    state = torch_roundtrip(gpu.state_dict())
    buf_devices = {t.device.type for t in state["online"].values()}
    assert buf_devices == {"cuda"}  # saved as GPU tensors; checkpoint.load_checkpoint maps them
    import io

    data = io.BytesIO()
    torch.save(gpu.state_dict(), data)
    data.seek(0)
    on_cpu = torch.load(data, map_location="cpu", weights_only=True)
    cpu = Learner(_cfg(device="cpu"), _net(seed=1), CPU)
    cpu.load_state_dict(on_cpu)
    assert cpu.updates == 4
    np.testing.assert_array_equal(cpu.get_params(), gpu.get_params())
    np.testing.assert_array_equal(cpu.get_target_params(), gpu.get_target_params())
    oc, og = cpu.learn(_batch(9)), gpu.learn(_batch(9))
    np.testing.assert_allclose(oc.td_abs, og.td_abs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cpu.get_params(), gpu.get_params(), rtol=1e-4, atol=1e-5)


def test_cuda_mixed_precision_learns_finite() -> None:
    """bf16 autocast on the GPU: finite loss, float32 parameters that move."""
    gpu = Learner(_cfg(mixed_precision=True), _net(), CUDA)
    before = gpu.get_params()
    out = gpu.learn(_batch(0))
    assert np.isfinite(out.metrics["td_loss"]) and out.td_abs.dtype == np.float32
    assert gpu._flat.dtype == torch.float32 and not np.array_equal(before, gpu.get_params())


SMALL = {
    "progress": False,
    "eval": {"eval_episodes": 5, "eval_period": 0, "target_return": None},
    "replay": {"min_replay_size": 256, "capacity": 20_000},
    "learner": {"batch_size": 64, "device": "cuda"},
    "actor": {"chunk_size": 32},
}


def test_cuda_serial_run_and_resume_on_cpu(tmp_path: Path) -> None:
    """A serial run with the learner on the GPU writes a summary and checkpoints; the run
    resumes with the learner on the CPU (the checkpoint's GPU tensors are mapped)."""
    from distdqn.runtime.serial import run_serial

    cfg = config_with(SMALL, runtime="serial", total_env_steps=2000, serial_log_steps=500)
    run = tmp_path / "r"
    run.mkdir()
    s = run_serial(cfg, spaces_for(cfg), run)
    assert s["env_steps"] >= 2000 and s["updates"] > 0 and s["accounting_ok"]
    cpu_cfg = config_with(SMALL, runtime="serial", total_env_steps=3000, serial_log_steps=500,
                          **{"learner.device": "cpu"})
    s2 = run_serial(cpu_cfg, spaces_for(cpu_cfg), run, resume=True)
    assert s2["env_steps"] >= 3000 and s2["updates"] > s["updates"]


def test_cuda_local_run(tmp_path: Path) -> None:
    """The local runtime with the learner on the GPU and 2 CPU actor processes: actors get
    parameters (param_lag is finite), the learner updates, the summary says cuda."""
    from distdqn.runtime.local import run_local

    cfg = from_dict({"progress": False, "seed": 0, "total_env_steps": 6000, "learner": {"device": "cuda"},
                     "eval": {"eval_period": 0, "eval_episodes": 5, "target_return": None}})
    (tmp_path / "r").mkdir()
    s = run_local(cfg, spaces_for(cfg), tmp_path / "r")
    assert s["updates"] > 0 and s["accounting_ok"] and s["env_steps"] >= 6000
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert saved["updates"] == s["updates"]

