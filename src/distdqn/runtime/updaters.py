"""In-process update strategies, one per topology: how sampled batches become new
parameters when every learner lives in the learner-side process (the serial runtime,
and the local runtime's single apex learner).

- :class:`ApexUpdater`: one learner owns its optimizer, publishes every ``publish_period``.
- :class:`GorilaUpdater`: M learners compute gradients on the parameters they pulled at
  the start of a round and push them to the parameter server one after another, so the
  k-th gradient of a round arrives k versions stale (Nair et al. 2015, deterministic).
- :class:`SyncUpdater`: M data-parallel learners. ``allreduce``: the mean of M batch
  gradients is applied by every learner (M identical learners are one learner applying
  the mean); ``average``: each learner takes local steps on its own batches and every
  ``average_period`` rounds all parameters are replaced by their mean (local SGD).

The multi-process versions of gorila and sync live in :mod:`distdqn.runtime.local` and use
``torch.distributed`` for the collectives; these in-process versions are their
deterministic reference.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from distdqn.config import ExperimentConfig
from distdqn.core import LearnOutput
from distdqn.envs import EnvSpaces
from distdqn.program import build_learner
from distdqn.roles.learner import Learner
from distdqn.roles.parameter_server import ParameterServer


class ReplayLike(Protocol):
    def can_sample(self, batch_size: int) -> bool: ...

    def sample(self, batch_size: int, num_batches: int = 1) -> Any: ...

    def update_priorities(self, keys: np.ndarray, td_abs: np.ndarray) -> None: ...


class Updater(Protocol):
    updates: int
    metrics: dict[str, float]

    def can_step(self, replay: ReplayLike) -> bool: ...

    def step(self, replay: ReplayLike) -> bool:
        """One unit of learning; True when the parameter server got new parameters."""
        ...

    def params(self) -> np.ndarray: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _learn_and_prioritize(learner: Learner, replay: ReplayLike, batch_size: int) -> LearnOutput:
    batch = replay.sample(batch_size)
    out = learner.learn(batch)
    replay.update_priorities(batch.keys, out.td_abs)
    return out


class ApexUpdater:
    """One learner that applies its own updates and publishes parameters (Ape-X).

    A step draws ``learner.batches_per_sample`` (K) batches in one replay call, takes one
    optimizer step on each in turn and then updates all their priorities at once, so a
    priority reaches the tree up to K - 1 updates late (Ape-X's learner and replay are
    asynchronous too, Horgan et al. 2018, sec. 3). Parameters are published whenever the
    step crosses a multiple of ``publish_period`` updates."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, ps: ParameterServer):
        self.cfg, self.ps = cfg, ps
        self.learner = build_learner(cfg, spaces)
        self.k = cfg.learner.batches_per_sample
        self.metrics: dict[str, float] = {}

    @property
    def updates(self) -> int:
        return self.learner.updates

    def can_step(self, replay: ReplayLike) -> bool:
        return replay.can_sample(self.cfg.learner.batch_size * self.k)

    def step(self, replay: ReplayLike) -> bool:
        batch = replay.sample(self.cfg.learner.batch_size, self.k)
        outs = [self.learner.learn(part) for part in batch.split(self.k)]
        replay.update_priorities(batch.keys, np.concatenate([o.td_abs for o in outs]))
        self.metrics = outs[-1].metrics
        period = self.cfg.learner.publish_period
        if self.learner.updates // period > (self.learner.updates - self.k) // period:
            self.ps.set_params(self.learner.get_params())
            return True
        return False

    def params(self) -> np.ndarray:
        return self.learner.get_params()

    def state_dict(self) -> dict[str, Any]:
        return {"learners": [self.learner.state_dict()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learners"][0])


class GorilaUpdater:
    """M gradient-mode learners pushing to a parameter server that owns the optimizer."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, ps: ParameterServer):
        if not ps.gradient_mode:
            raise ValueError("gorila needs a parameter server in gradient mode")
        self.cfg, self.ps = cfg, ps
        self.learners = [build_learner(cfg, spaces) for _ in range(cfg.learner.num_learners)]
        self.versions = [-1] * len(self.learners)
        self.target_versions = [-1] * len(self.learners)
        self.turn = 0
        self.metrics: dict[str, float] = {}
        self.staleness: list[int] = []

    @property
    def updates(self) -> int:
        return self.ps.applied_updates

    def can_step(self, replay: ReplayLike) -> bool:
        return replay.can_sample(self.cfg.learner.batch_size)

    def _pull(self, i: int) -> None:
        got = self.ps.get_params(newer_than=self.versions[i])
        if got is not None:
            self.versions[i] = got[0]
            self.learners[i].set_params(got[1])
        tgt = self.ps.get_target(newer_than=self.target_versions[i])
        if tgt is not None:
            self.target_versions[i] = tgt[0]
            self.learners[i].set_target_params(tgt[1])

    def step(self, replay: ReplayLike) -> bool:
        i = self.turn % len(self.learners)
        if i == 0:  # a new round: every learner pulls the newest parameters
            for k in range(len(self.learners)):
                self._pull(k)
        self.turn += 1
        batch = replay.sample(self.cfg.learner.batch_size)
        out = self.learners[i].compute_gradients(batch)
        replay.update_priorities(batch.keys, out.td_abs)
        result = self.ps.apply_gradients(out.grads, self.versions[i])
        self.staleness.append(result.staleness)
        self.metrics = dict(out.metrics, staleness=float(result.staleness),
                            dropped_stale_gradients=float(self.ps.dropped_stale_gradients))
        return result.applied

    def params(self) -> np.ndarray:
        return self.ps.get_params()[1]

    def state_dict(self) -> dict[str, Any]:
        return {"turn": self.turn, "versions": list(self.versions), "target_versions": list(self.target_versions),
                "learners": [lr.state_dict() for lr in self.learners]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.turn = int(state["turn"])
        self.versions = [int(v) for v in state["versions"]]
        self.target_versions = [int(v) for v in state["target_versions"]]
        for lr, st in zip(self.learners, state["learners"]):
            lr.load_state_dict(st)


class SyncUpdater:
    """M synchronous data-parallel learners, in one process (see module docstring)."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces, ps: ParameterServer):
        self.cfg, self.ps = cfg, ps
        self.m = cfg.learner.num_learners
        self.mode = cfg.learner.sync_mode
        n = 1 if self.mode == "allreduce" else self.m
        self.learners = [build_learner(cfg, spaces) for _ in range(n)]
        self.rounds = 0
        self.metrics: dict[str, float] = {}

    @property
    def updates(self) -> int:
        return self.learners[0].updates

    def can_step(self, replay: ReplayLike) -> bool:
        return replay.can_sample(self.cfg.learner.batch_size * self.m)

    def step(self, replay: ReplayLike) -> bool:
        b = self.cfg.learner.batch_size
        if self.mode == "allreduce":
            lead = self.learners[0]
            outs = []
            for _ in range(self.m):
                batch = replay.sample(b)
                out = lead.compute_gradients(batch)
                replay.update_priorities(batch.keys, out.td_abs)
                outs.append(out)
            lead.apply_gradients(torch.stack([o.grads for o in outs]).mean(dim=0))
        else:
            outs = [_learn_and_prioritize(lr, replay, b) for lr in self.learners]
            self.rounds += 1
            if self.rounds % self.cfg.learner.average_period == 0:
                mean = np.mean([lr.get_params() for lr in self.learners], axis=0, dtype=np.float64).astype(np.float32)
                for lr in self.learners:
                    lr.set_params(mean)
        self.metrics = {k: float(np.mean([o.metrics[k] for o in outs])) for k in outs[0].metrics}
        if self.updates % self.cfg.learner.publish_period == 0:
            self.ps.set_params(self.params())
            return True
        return False

    def params(self) -> np.ndarray:
        if len(self.learners) == 1:
            return self.learners[0].get_params()
        return np.mean([lr.get_params() for lr in self.learners], axis=0, dtype=np.float64).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "learners": [lr.state_dict() for lr in self.learners]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds = int(state["rounds"])
        for lr, st in zip(self.learners, state["learners"]):
            lr.load_state_dict(st)


def make_updater(cfg: ExperimentConfig, spaces: EnvSpaces, ps: ParameterServer) -> Updater:
    if cfg.preset == "gorila":
        return GorilaUpdater(cfg, spaces, ps)
    if cfg.preset == "sync":
        return SyncUpdater(cfg, spaces, ps)
    return ApexUpdater(cfg, spaces, ps)
