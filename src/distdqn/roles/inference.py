"""SEED RL's central inference (Espeholt et al. 2020, sec. 3): one network beside the
learner acts for every env worker, in batched forward passes, and builds the agent's items
from the steps the workers send back. No transport code here.

Each half of each env worker (:mod:`distdqn.roles.env_worker`) is a *slot*: an
:class:`~distdqn.roles.actor.Actor` whose runner is a :class:`~distdqn.roles.env_worker.HalfLink`
(what the worker sent) and whose policy is driven by the server's pass (:meth:`Actor.choose`
with the slot's rows of the batched Q-values). A slot so builds exactly the items an apex
actor builds from the same steps: the same adder, Ape-X per-env epsilons over all slots'
envs, initial priorities from the acting values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from distdqn.agents.base import Agent
from distdqn.config import ExperimentConfig
from distdqn.core import Chunk, load_flat_params
from distdqn.roles.actor import Actor, ActorSpec
from distdqn.roles.env_worker import HalfLink, HalfStep

SEED_COLUMNS = ("inference_batch", "inference_latency_ms_p50", "inference_latency_ms_p99", "env_step_share")
"""Metrics-row columns of topology seed: mean observations per forward pass; the round trip
from an env worker's request to its actions (p50, p99; local runtime): it ends when the
actions arrive if the worker was waiting for them, else when the server sent them (a worker
busy with its other half is not waiting on inference); the share of the env workers' time
spent stepping envs (local runtime)."""


class InferenceServer:
    """Batched acting for K slots (``actor.num_actors`` workers x ``inference.splits``).

    Args:
        cfg: the experiment.
        agent: the agent (its policy's :meth:`choose`, its adder).
        network: the server's network (moved to ``device``).
        num_slots: K.
        spec_of: ``spec_of(slot, generation)`` the :class:`ActorSpec` of a slot's actor
            (its seed differs per worker generation).
        device: where the forward passes run (the learner's device).
    """

    def __init__(self, cfg: ExperimentConfig, agent: Agent, network: nn.Module, num_slots: int,
                 spec_of: Callable[[int, int], ActorSpec], device: torch.device | str = "cpu"):
        self.cfg, self.agent, self.spec_of = cfg, agent, spec_of
        self.device = torch.device(device)
        self.net = network.to(self.device).eval()
        # The slots' own policies only make the rare pass over truncated episodes' final
        # observations (CPU tensors): on CPU they share the server's network. A recurrent
        # agent's slots make none (its passes are batched_forward's), so they share it too.
        self._recurrent = hasattr(agent, "batched_forward")
        self._slot_net = self.net if self.device.type == "cpu" or self._recurrent else _OnDevice(self.net, self.device)
        self._slot_cfg = dataclasses.replace(cfg.actor, trace_network=False)
        self._forward: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.slots: list[Actor | None] = [None] * num_slots
        self._actions: list[np.ndarray | None] = [None] * num_slots
        self.version = -1
        self.passes = 0
        self.batched = 0
        self._mean: float | None = None

    # ------------------------------------------------------------------ slots

    def open(self, slot: int, generation: int, first_obs: np.ndarray) -> Chunk | None:
        """(Re)start ``slot`` for a worker generation whose half observed ``first_obs``
        (``[H, *obs_shape]``). Returns the slot's previous actor's last chunk: its complete
        items, with its open windows counted in :attr:`Chunk.dropped` (None when the slot was
        new or held nothing)."""
        last = self.close(slot)
        half_cfg = dataclasses.replace(self.cfg.env, envs_per_actor=len(first_obs))
        actor = Actor(self.spec_of(slot, generation), half_cfg, self._slot_cfg, self.agent, self._slot_net,
                      runner=HalfLink(np.array(first_obs)))
        actor.param_version = self.version
        self.slots[slot] = actor
        self._actions[slot] = None
        return last

    def close(self, slot: int) -> Chunk | None:
        """Stop ``slot`` (its worker is gone or stopping): its last chunk as for :meth:`open`."""
        actor = self.slots[slot]
        if actor is None:
            return None
        self.slots[slot] = None
        last = actor.flush()  # None only when nothing was recorded since the last chunk
        if last is not None:
            last.dropped = int(actor.adder.num_recorded)  # the open windows, after the flush
        return last

    def flush(self, slot: int) -> Chunk | None:
        """The complete items of a running slot as a (short) chunk (a graceful stop)."""
        actor = self.slots[slot]
        return None if actor is None else actor.flush()

    def num_envs(self, slot: int) -> int:
        return self.slots[slot].num_envs

    # ------------------------------------------------------------------ acting

    def set_params(self, version: int, flat: np.ndarray) -> None:
        """Load a newer flat parameter vector (:func:`distdqn.core.flat_params` layout)."""
        load_flat_params(self.net, flat)
        self.version = int(version)
        for actor in self.slots:
            if actor is not None:
                actor.param_version = self.version

    def infer(self, slots: list[int]) -> list[np.ndarray]:
        """One forward pass over the current observations of ``slots``; each slot's
        epsilon-greedy actions (``[H]`` int64), kept for its next :meth:`observe`."""
        actors = [self.slots[k] for k in slots]
        if self._recurrent:
            qs = self._recurrent_pass(actors)
        else:
            obs = np.concatenate([a.obs for a in actors]) if len(actors) > 1 else actors[0].obs
            x = torch.from_numpy(obs)
            if self._forward is None:
                self._forward = self._make_forward(x)
            with torch.inference_mode():
                q = self._forward(x.to(self.device, non_blocking=True)).float().cpu().numpy()
            bounds = np.cumsum([0] + [a.num_envs for a in actors])
            qs = [q[bounds[j] : bounds[j + 1]] for j in range(len(actors))]
        self.passes += 1
        self.batched += sum(a.num_envs for a in actors)
        out = []
        for k, a, q_slot in zip(slots, actors, qs):
            actions = a.choose(q_slot)
            self._actions[k] = actions
            out.append(actions)
        return out

    def _recurrent_pass(self, actors: list[Actor]) -> list[np.ndarray]:
        """One pass of a recurrent agent: every slot's rows (observation and per-env state)
        in, each slot's new state and Q-values out."""
        rows = [a.policy.pass_inputs(a.obs) for a in actors]
        batch = {k: torch.cat([r[k] for r in rows]).to(self.device, non_blocking=True) for k in rows[0]}
        with torch.inference_mode():
            got = {k: v.float().cpu() for k, v in self.agent.batched_forward(self.net, batch).items()}
        qs, i = [], 0
        for a in actors:
            qs.append(a.policy.pass_outputs({k: v[i : i + a.num_envs] for k, v in got.items()}))
            i += a.num_envs
        return qs

    def _make_forward(self, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        if not self.cfg.actor.trace_network:
            return self.net
        from distdqn.agents.inference import trace_for_inference

        return trace_for_inference(self.net, example.to(self.device))

    def observe(self, slot: int, step: HalfStep) -> Chunk | None:
        """Record the slot's half's result of the actions :meth:`infer` chose; a chunk once
        ``actor.chunk_size`` items are ready."""
        actor = self.slots[slot]
        actor.runner.pending = step
        actions = self._actions[slot]
        self._actions[slot] = None
        return actor.observe(actions, actor.runner.step(actions))

    def mean_batch(self) -> float | None:
        """Mean observations per forward pass since the last call (the previous mean when
        no pass ran since; None before the first)."""
        if self.passes:
            self._mean = self.batched / self.passes
            self.passes = self.batched = 0
        return self._mean


class _OnDevice(nn.Module):
    """``net`` on ``device`` called with and returning CPU tensors."""

    def __init__(self, net: nn.Module, device: torch.device):
        super().__init__()
        self.net, self.device = net, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.device)).float().cpu()


class DynamicBatcher:
    """Which waiting requests a forward pass takes, and when (dynamic batching, as in
    Sample Factory and TorchRL): a pass is due once ``max_batch`` observations wait, or once
    the oldest request has waited ``max_wait`` seconds; it takes the oldest requests, up to
    ``max_batch`` observations (one request of more is taken alone).

    Args:
        max_batch: observations (``inference.max_batch``).
        max_wait: seconds (``inference.max_wait_ms / 1000``).
    """

    def __init__(self, max_batch: int, max_wait: float):
        self.max_batch, self.max_wait = int(max_batch), float(max_wait)
        self._waiting: dict[int, tuple[int, float]] = {}  # slot -> (observations, arrival), oldest first
        self._count = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, slot: int, size: int, now: float) -> None:
        """``slot`` asks for ``size`` actions at time ``now`` (seconds)."""
        self.discard(slot)
        self._waiting[slot] = (int(size), float(now))
        self._count += int(size)

    def discard(self, slot: int) -> None:
        got = self._waiting.pop(slot, None)
        if got is not None:
            self._count -= got[0]

    def due(self, now: float) -> bool:
        if not self._waiting:
            return False
        return self._count >= self.max_batch or now - next(iter(self._waiting.values()))[1] >= self.max_wait

    def take(self) -> list[int]:
        """The slots of the next pass (oldest first), removed from the waiting ones."""
        group, n = [], 0
        for k, (size, _) in self._waiting.items():
            if group and n + size > self.max_batch:
                break
            group.append(k)
            n += size
        for k in group:
            self.discard(k)
        return group

    def timeout(self, now: float, idle: float) -> float:
        """Seconds until a pass is due by age (``idle`` when nothing waits)."""
        if not self._waiting:
            return idle
        return max(0.0, next(iter(self._waiting.values()))[1] + self.max_wait - now)
