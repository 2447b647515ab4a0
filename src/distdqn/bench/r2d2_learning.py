"""Row (b) for the R2D2 agent: the apex learner's step on a replay of sequences against a
bare PyTorch loop over batches of the same sequences (B sequences of burn-in + length
steps): the same pure loss (:func:`~distdqn.agents.r2d2.loss.r2d2_loss`), backward,
clipping and optimizer step, with no replay, priorities, target copy or publication."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distdqn.bench.common import LEARNING_ROUNDS, learning_step_under_test
from distdqn.config import ExperimentConfig
from distdqn.core import Batch, Chunk
from distdqn.envs import EnvSpaces
from distdqn.program import build_agent, build_network, item_spec, learner_device
from distdqn.roles.optim import make_optimizer


def random_sequences(cfg: ExperimentConfig, spaces: EnvSpaces, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` sequences of random data in the agent's layout (``[n, T(+1), ...]``)."""
    spec = item_spec(cfg, spaces)
    out = {}
    for name, f in spec.fields:
        if name in ("action", "prev_action"):
            out[name] = rng.integers(spaces.num_actions, size=(n, *f.shape)).astype(np.int64)
        elif name == "mask":
            out[name] = np.ones((n, *f.shape), np.float32)
        elif name == "terminated":
            out[name] = (rng.random((n, *f.shape)) < 0.01).astype(np.float32)
        else:
            out[name] = rng.standard_normal((n, *f.shape)).astype(f.np_dtype)
    return out


class BareR2D2Update:
    """(b) ceiling: :func:`~distdqn.agents.r2d2.loss.r2d2_loss` on in-memory random batches,
    backward, clipping, optimizer step."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, device: torch.device, num_batches: int = 8):
        self.cfg = cfg
        self.net: nn.Module = build_network(cfg, spaces).to(device)
        self.target: nn.Module = build_network(cfg, spaces).to(device)
        self.loss = build_agent(cfg, spaces).loss()
        self.optimizer = make_optimizer(cfg.learner, self.net.parameters())
        rng = np.random.default_rng([cfg.seed, 15])
        b = cfg.learner.batch_size
        self.batches = [Batch(data={k: torch.from_numpy(v).to(device)
                                    for k, v in random_sequences(cfg, spaces, b, rng).items()},
                              keys=np.arange(b), weights=torch.ones(b, device=device)) for _ in range(num_batches)]
        self.updates = 0

    def __call__(self) -> None:
        out = self.loss(self.net, self.target, self.batches[self.updates % len(self.batches)])
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.cfg.learner.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.learner.max_grad_norm)
        self.optimizer.step()
        self.updates += 1


def measure_r2d2_learning(cfg: ExperimentConfig, spaces: EnvSpaces, seconds: float, run_dir: Path) -> dict[str, Any]:
    """(b) figure and ceiling, alternating in :data:`LEARNING_ROUNDS` rounds. Figure: the
    apex learning step (prioritized draw of ``batch_size`` sequences, learn, priority update,
    publication written to shared memory) on a replay filled with random sequences."""
    c, replay, ps, up, shared = learning_step_under_test(cfg, spaces)
    rng = np.random.default_rng([cfg.seed, 16])
    spec, b = item_spec(c, spaces), c.learner.batch_size
    fill = max(c.replay.min_replay_size, 4 * b)
    while len(replay) < fill:
        replay.insert(Chunk(data=random_sequences(c, spaces, 64, rng), spec=spec, priority=None))

    def step() -> None:
        if up.step(replay):
            shared.write(ps.version, ps.get_params()[1])

    bare = BareR2D2Update(c, spaces, learner_device(c, spaces))
    for _ in range(5):  # warm-up
        step()
        bare()
    counts, times = [0, 0], [0.0, 0.0]
    for _ in range(LEARNING_ROUNDS):
        for i, fn in enumerate((bare, step)):
            end = time.perf_counter() + seconds / LEARNING_ROUNDS
            t0 = time.perf_counter()
            while time.perf_counter() < end:
                fn()
                counts[i] += 1
            times[i] += time.perf_counter() - t0
    r = c.r2d2
    return {"ups": counts[1] / times[1], "ceiling_ups": counts[0] / times[0], "replay_size": len(replay),
            "batch_size": b, "sequence_steps": r.burn_in + r.sequence_length, "burn_in": r.burn_in,
            "torch_threads": c.learner.torch_threads, "device": str(learner_device(c, spaces))}
