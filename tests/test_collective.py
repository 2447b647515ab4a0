"""Tests of distdqn.runtime.collective with 2 spawned processes (Gloo on CPU, file rendezvous)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp

from distdqn.config import LearnerConfig, NetworkConfig
from distdqn.agents.dqn.spec import transition_batch as SampledBatch
from distdqn.agents.dqn.networks import make_network
from distdqn.roles.learner import Learner
from distdqn.runtime import collective

pytestmark = pytest.mark.timeout(120)  # a hung collective fails instead of blocking

WORLD = 2
STEPS = 5


def _net() -> torch.nn.Module:
    torch.manual_seed(0)  # same init on every rank
    return make_network(NetworkConfig(kind="mlp", hidden_sizes=(8,), dueling=True), (4,), 2)


def _cfg() -> LearnerConfig:
    return LearnerConfig(batch_size=4, learning_rate=1e-2, device="cpu", target_update_period=2)


def _batch(seed: int) -> SampledBatch:
    g = torch.Generator().manual_seed(seed)
    return SampledBatch(
        obs=torch.randn(4, 4, generator=g),
        action=torch.randint(0, 2, (4,), generator=g),
        reward=torch.randn(4, generator=g),
        discount=torch.tensor([0.99, 0.0, 0.99, 0.98]),
        next_obs=torch.randn(4, 4, generator=g),
        weights=torch.ones(4),
        keys=np.arange(4, dtype=np.int64),
    )


def _batch_seed(rank: int, step: int) -> int:
    return 1000 * rank + step


# --------------------------------------------------------------------------- workers (module level)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    """Both scenarios in one process group (one spawn keeps the test file fast)."""
    torch.set_num_threads(1)
    backend = collective.init_process_group(rank, WORLD, init_file, timeout_s=60)  # auto -> gloo on CPU
    assert backend == "gloo"
    try:
        _data_parallel(rank, out_dir)
        _hand_built(rank, out_dir)
    finally:
        # Meets the peer at a monitored barrier before tearing gloo down: a rank that
        # destroys its group while the peer's gloo thread still waits on it can abort the
        # peer ("terminate called without an active exception", seen once in CI).
        collective.destroy_process_group()


def _leaver(rank: int, init_file: str, out_dir: str) -> None:
    """Rank 1 vanishes without leaving the group; rank 0 must still get out."""
    import os
    import time

    collective.init_process_group(rank, WORLD, init_file, timeout_s=60)
    ready = Path(out_dir) / "rank0_ready"
    if rank == 1:
        # Vanish only once rank 0's init has returned: leaving while rank 0 is still in
        # Gloo's connectFullMesh fails its init instead ("Connection closed by peer", CI).
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os._exit(0)
    ready.write_text("1")
    t0 = time.perf_counter()
    collective.destroy_process_group(barrier_timeout_s=2.0)
    (Path(out_dir) / "left.txt").write_text(f"{time.perf_counter() - t0:.3f}")


def _data_parallel(rank: int, out_dir: str) -> None:
    learner = Learner(_cfg(), _net(), torch.device("cpu"))
    local_grads = []
    for step in range(STEPS):
        out = learner.compute_gradients(_batch(_batch_seed(rank, step)))
        local_grads.append(out.grads.clone())
        collective.allreduce_mean_(out.grads)
        learner.apply_gradients(out.grads)
    torch.save({"params": torch.from_numpy(learner.get_params()),
                "target": torch.from_numpy(learner.get_target_params()),
                "updates": learner.updates,
                "local_grads": torch.stack(local_grads)},
               Path(out_dir) / f"dp{rank}.pt")


def _hand_built(rank: int, out_dir: str) -> None:
    t = torch.tensor([1.0, -2.0, 0.5, 10.0]) * (rank + 1) + rank  # r0: [1,-2,.5,10]; r1: [3,-3,2,21]
    same = collective.allreduce_mean_(t)
    assert same is t
    mod = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        for i, p in enumerate(mod.parameters()):
            p.fill_(float(i + 1) + 2.0 * rank)  # r0: 1, 2, 3; r1: 3, 4, 5
        mod[0].weight[0, 0] = 10.0 * (rank + 1)  # r0: 10; r1: 20
    collective.average_parameters_(mod)
    torch.save({"t": t, "params": [p.detach().clone() for p in mod.parameters()],
                "world": torch.distributed.get_world_size()}, Path(out_dir) / f"hb{rank}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Spawns the 2 ranks once; returns the folder holding their result files."""
    out = tmp_path_factory.mktemp("collective")
    init_file = out / "rendezvous"
    assert not init_file.exists()
    tmp.spawn(_worker, args=(str(init_file), str(out)), nprocs=WORLD, join=True)
    return out


# --------------------------------------------------------------------------- tests


def test_sync_data_parallel_learners_stay_identical(results: Path) -> None:
    r0 = torch.load(results / "dp0.pt", weights_only=True)
    r1 = torch.load(results / "dp1.pt", weights_only=True)
    assert r0["updates"] == r1["updates"] == STEPS
    assert torch.equal(r0["params"], r1["params"])
    assert torch.equal(r0["target"], r1["target"])
    # the ranks really had different gradients
    assert not torch.equal(r0["local_grads"][0], r1["local_grads"][0])

    # Without the all-reduce each rank would have drifted apart from the synchronized result.
    for rank in range(WORLD):
        alone = Learner(_cfg(), _net(), torch.device("cpu"))
        for step in range(STEPS):
            alone.learn(_batch(_batch_seed(rank, step)))
        assert not np.array_equal(alone.get_params(), r0["params"].numpy())

    # The synchronized run equals a single process applying the mean of the two local gradients.
    ref = [Learner(_cfg(), _net(), torch.device("cpu")) for _ in range(WORLD)]
    for step in range(STEPS):
        gs = [ref[r].compute_gradients(_batch(_batch_seed(r, step))).grads for r in range(WORLD)]
        torch.testing.assert_close(gs[0], r0["local_grads"][step], rtol=0, atol=0)
        mean = (gs[0] + gs[1]) / WORLD
        for learner in ref:
            learner.apply_gradients(mean)
    torch.testing.assert_close(torch.from_numpy(ref[0].get_params()), r0["params"], rtol=1e-6, atol=1e-7)


def test_allreduce_mean_and_average_parameters_hand_built(results: Path) -> None:
    r0 = torch.load(results / "hb0.pt", weights_only=True)
    r1 = torch.load(results / "hb1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    expected_t = torch.tensor([2.0, -2.5, 1.25, 15.5])  # mean of [1,-2,.5,10] and [3,-3,2,21]
    assert torch.equal(r0["t"], expected_t) and torch.equal(r1["t"], expected_t)
    # parameters: weight0 [2,3], bias0 [2], weight1 [1,2]; rank values 1/2/3 and 3/4/5 -> means 2/3/4
    expected = [torch.full((2, 3), 2.0), torch.full((2,), 3.0), torch.full((1, 2), 4.0)]
    expected[0][0, 0] = 15.0  # (10 + 20) / 2
    for got in (r0["params"], r1["params"]):
        assert len(got) == 3
        for g, e in zip(got, expected):
            assert torch.equal(g, e)


def test_destroy_does_not_wait_for_a_vanished_peer(tmp_path: Path) -> None:
    tmp.spawn(_leaver, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    assert float((tmp_path / "left.txt").read_text()) < 30.0


def test_errors_without_process_group() -> None:
    with pytest.raises(TypeError):
        collective.allreduce_mean_(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError):
        collective.init_process_group(2, 2, "/nonexistent/x")
    with pytest.raises(ValueError):
        collective.init_process_group(0, 2, "/nonexistent/x", backend="mpi")
    collective.destroy_process_group()  # no group: a no-op
