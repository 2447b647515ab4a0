"""Row (b): the learner's own step against a bare PyTorch update loop."""

from __future__ import annotations

import copy
import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distdqn.agents.dqn.loss import n_step_double_dqn_targets, td_loss
from distdqn.agents.dqn.spec import transition_chunk
from distdqn.bench.common import FILL_LIMIT, LEARNING_ROUNDS, random_transitions, timed
from distdqn.config import ExperimentConfig, replace
from distdqn.envs import EnvSpaces
from distdqn.program import (
    build_network,
    build_parameter_server,
    build_replay,
    frame_dedup_enabled,
    learner_device,
)
from distdqn.roles.optim import make_optimizer
from distdqn.runtime.local.shared import SharedParams
from distdqn.topologies import make_updater


class BareUpdate:
    """(b) ceiling: one double-DQN update on in-memory random batches, nothing else.

    The same network (``build_network``), optimizer (``make_optimizer``), loss
    (:mod:`distdqn.agents.dqn.loss`), gradient clipping and target-copy period as the learner;
    no replay, no host<->numpy conversions, no priorities, no publication. Written as a
    plain PyTorch loop: the optimizer, the clipping and the target copy go tensor by
    tensor (the learner keeps its parameters in one flat buffer instead, which can put
    the (b) ratio above 1 for small networks).
    """

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, device: torch.device, num_batches: int = 8):
        self.cfg = cfg.learner
        self.device = device
        self.online: nn.Module = build_network(cfg, spaces).to(device)
        self.target: nn.Module = copy.deepcopy(self.online).requires_grad_(False)
        self.optimizer = make_optimizer(self.cfg, self.online.parameters())
        rng = np.random.default_rng([cfg.seed, 11])
        gamma_n = cfg.learner.gamma ** cfg.actor.n_step
        self.batches = []
        for _ in range(num_batches):
            d = random_transitions(spaces, self.cfg.batch_size, rng, gamma_n)
            d["weights"] = rng.uniform(0.3, 1.0, size=self.cfg.batch_size).astype(np.float32)
            d.pop("priority")
            self.batches.append({k: torch.from_numpy(v).to(device) for k, v in d.items()})
        self.updates = 0

    def __call__(self) -> None:
        b = self.batches[self.updates % len(self.batches)]
        q = self.online(b["obs"])
        with torch.no_grad():
            q_next_online = self.online(b["next_obs"]) if self.cfg.double_dqn else None
            q_next_target = self.target(b["next_obs"])
        y = n_step_double_dqn_targets(b["reward"], b["discount"],
                                      q_next_target if q_next_online is None else q_next_online,
                                      q_next_target, double_dqn=self.cfg.double_dqn)
        loss, _ = td_loss(q, b["action"], y, b["weights"], self.cfg.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.online.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        if self.cfg.tau is None and self.updates % self.cfg.target_update_period == 0:
            self.target.load_state_dict(self.online.state_dict())

    def sync(self) -> None:
        """Wait for queued device work (CUDA); a no-op on CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def measure_learning(cfg: ExperimentConfig, spaces: EnvSpaces, seconds: float, run_dir: Path) -> dict[str, Any]:
    """(b) figure and ceiling, in this process, alternating in :data:`LEARNING_ROUNDS` rounds.

    Figure: updates per second of the topology's learning step as the local runtime runs it
    (:meth:`~distdqn.topologies.apex.ApexUpdater.step`: sample ``learner.batches_per_sample``
    batches -> learn on each -> update_priorities, and ``ps.set_params`` every
    ``publish_period`` updates) plus the runtime's write of each published vector to shared
    memory, on a replay filled with random transitions, ``samples_per_insert=0`` so the rate
    limiter never blocks. Ceiling: :class:`BareUpdate`. Both with ``learner.torch_threads``
    intra-op threads.
    """
    c = replace(cfg, **{"replay.samples_per_insert": 0.0, "eval.eval_period": 0, "eval.target_return": None,
                        "checkpoint_period": 0})
    torch.set_num_threads(c.learner.torch_threads)
    replay = build_replay(c, spaces)
    ps = build_parameter_server(c, spaces)
    up = make_updater(c, spaces, ps)
    rng = np.random.default_rng([cfg.seed, 12])
    fill = min(c.replay.capacity, FILL_LIMIT)
    gamma_n = c.learner.gamma ** c.actor.n_step
    if frame_dedup_enabled(c, spaces):
        # Compact frame chunks as actors send them (random stacks would store 2k frames each).
        from distdqn.bench.replay_rows import SyntheticActor
        from distdqn.bench.replay_rows import fill as fill_replay

        pool = rng.integers(0, 256, size=(256, *spaces.obs_shape[1:]), dtype=np.uint8)
        sources = [SyntheticActor(i, c.env.envs_per_actor, c.actor.n_step, 800, c.actor.chunk_size,
                                  np.random.default_rng([cfg.seed, 12, i]), pool, spaces.num_actions, gamma_n)
                   for i in range(c.actor.num_actors)]
        fill_replay(replay, sources, fill)
    else:
        for i, start in enumerate(range(0, fill, 10_000)):
            d = random_transitions(spaces, min(10_000, fill - start), rng, gamma_n)
            replay.insert(transition_chunk(**d, actor_id=i % c.actor.num_actors))
    shared = SharedParams(mp.get_context("spawn"), ps.num_params)

    def learner_step() -> None:
        if up.step(replay):
            shared.write(ps.version, ps.get_params()[1])

    def learner_updates(seconds: float) -> tuple[int, float]:
        # A learn step takes learner.batches_per_sample updates: count updates, not calls.
        before = up.updates
        _, t = timed(learner_step, seconds)
        return up.updates - before, t

    device = learner_device(c, spaces)
    bare = BareUpdate(c, spaces, device)
    for _ in range(20):  # warm-up (allocator, autograd graph caches)
        learner_step()
        bare()
    n_l = n_b = 0
    t_l = t_b = 0.0
    for _ in range(LEARNING_ROUNDS):
        k, t = timed(bare, seconds / LEARNING_ROUNDS, bare.sync)
        n_b, t_b = n_b + k, t_b + t
        k, t = learner_updates(seconds / LEARNING_ROUNDS)
        n_l, t_l = n_l + k, t_l + t
    return {"ups": n_l / t_l, "ceiling_ups": n_b / t_b, "replay_size": len(replay),
            "batch_size": c.learner.batch_size, "torch_threads": c.learner.torch_threads,
            "device": str(device), "publish_period": c.learner.publish_period}
