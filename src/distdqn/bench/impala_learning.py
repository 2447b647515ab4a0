"""Row (b) for the actor-critic agent: the impala learner's step against a bare V-trace
update loop on batches of the same size."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distdqn.agents.actor_critic.loss import split_outputs
from distdqn.agents.actor_critic.vtrace import vtrace
from distdqn.bench.common import LEARNING_ROUNDS, learning_step_under_test
from distdqn.config import ExperimentConfig
from distdqn.core import Chunk
from distdqn.envs import EnvSpaces
from distdqn.program import (
    build_network,
    item_spec,
    learner_device,
)
from distdqn.roles.optim import make_optimizer


def random_unrolls(cfg: ExperimentConfig, spaces: EnvSpaces, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` unrolls of random data in the agent's layout (``[n, T, ...]``)."""
    t, shape = cfg.actor_critic.unroll_length, tuple(spaces.obs_shape)
    obs = rng.standard_normal((n, t, *shape)).astype(spaces.obs_dtype)
    ended = rng.random((n, t)) < 0.05
    return {"obs": obs, "action": rng.integers(spaces.num_actions, size=(n, t)).astype(np.int64),
            "reward": rng.standard_normal((n, t)).astype(np.float32),
            "discount": np.where(ended, 0.0, cfg.learner.gamma).astype(np.float32),
            "next_obs": rng.standard_normal((n, t, *shape)).astype(spaces.obs_dtype),
            "continues": np.where(ended, 0.0, 1.0).astype(np.float32),
            "behaviour_logp": np.log(rng.uniform(0.2, 0.8, size=(n, t))).astype(np.float32)}


class BareVTraceUpdate:
    """(b) ceiling: the IMPALA update as a plain PyTorch loop on in-memory random batches:
    forward over obs and next_obs, V-trace (:func:`~distdqn.agents.actor_critic.vtrace.vtrace`),
    policy-gradient + value + entropy loss, backward, clipping, optimizer step. No replay,
    no publication, no metrics."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, device: torch.device, num_batches: int = 8):
        self.cfg, self.device = cfg, device
        self.net: nn.Module = build_network(cfg, spaces).to(device)
        self.optimizer = make_optimizer(cfg.learner, self.net.parameters())
        rng = np.random.default_rng([cfg.seed, 13])
        self.batches = [{k: torch.from_numpy(v).to(device)
                         for k, v in random_unrolls(cfg, spaces, cfg.learner.batch_size, rng).items()}
                        for _ in range(num_batches)]
        self.updates = 0

    def __call__(self) -> None:
        d, ac = self.batches[self.updates % len(self.batches)], self.cfg.actor_critic
        b, t = d["action"].shape
        logits, values = split_outputs(self.net(d["obs"].reshape(b * t, *d["obs"].shape[2:])))
        with torch.no_grad():
            _, next_values = split_outputs(self.net(d["next_obs"].reshape(b * t, *d["next_obs"].shape[2:])))
        log_probs = torch.log_softmax(logits.reshape(b, t, -1).transpose(0, 1), dim=-1)
        values = values.reshape(b, t).transpose(0, 1)
        logp = log_probs.gather(-1, d["action"].transpose(0, 1).unsqueeze(-1)).squeeze(-1)
        vt = vtrace(logp.detach() - d["behaviour_logp"].transpose(0, 1), d["discount"].transpose(0, 1),
                    d["reward"].transpose(0, 1), values.detach(), next_values.reshape(b, t).transpose(0, 1),
                    d["continues"].transpose(0, 1), ac.rho_bar, ac.c_bar, ac.rho_bar_pg)
        loss = (-(vt.pg_advantages * logp).mean() + ac.value_coef * 0.5 * (vt.vs - values).pow(2).mean()
                + ac.entropy_coef * (log_probs.exp() * log_probs).sum(-1).mean())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.learner.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.learner.max_grad_norm)
        self.optimizer.step()
        self.updates += 1


def measure_impala_learning(cfg: ExperimentConfig, spaces: EnvSpaces, seconds: float, run_dir: Path) -> dict[str, Any]:
    """(b) figure and ceiling, alternating in :data:`LEARNING_ROUNDS` rounds.

    Figure: updates/s of the impala learning step as the local runtime runs it (a FIFO draw
    of ``batch_size`` unrolls -> learn -> publication, written to shared memory), timed
    around the steps only: the FIFO reads each unroll once, so it is refilled with random
    unrolls between steps, outside the clock. Ceiling: :class:`BareVTraceUpdate`.
    """
    c, replay, ps, up, shared = learning_step_under_test(cfg, spaces)
    rng = np.random.default_rng([cfg.seed, 14])
    spec, b = item_spec(c, spaces), c.learner.batch_size
    pool = [random_unrolls(c, spaces, b, rng) for _ in range(4)]

    def step_time(k: int) -> float:
        if not up.can_step(replay):
            replay.insert(Chunk(data=pool[k % len(pool)], spec=spec, priority=None))
        t0 = time.perf_counter()
        if up.step(replay):
            shared.write(ps.version, ps.get_params()[1])
        return time.perf_counter() - t0

    bare = BareVTraceUpdate(c, spaces, learner_device(c, spaces))
    for k in range(10):  # warm-up
        step_time(k)
        bare()
    n_l = n_b = 0
    t_l = t_b = 0.0
    for _ in range(LEARNING_ROUNDS):
        end = time.perf_counter() + seconds / LEARNING_ROUNDS
        t0 = time.perf_counter()
        while time.perf_counter() < end:
            bare()
            n_b += 1
        t_b += time.perf_counter() - t0
        spent = 0.0
        while spent < seconds / LEARNING_ROUNDS:
            spent += step_time(n_l)
            n_l += 1
        t_l += spent
    return {"ups": n_l / t_l, "ceiling_ups": n_b / t_b, "replay_size": len(replay), "batch_size": b,
            "unroll_length": c.actor_critic.unroll_length, "torch_threads": c.learner.torch_threads,
            "device": str(learner_device(c, spaces)), "publish_period": c.learner.publish_period}
