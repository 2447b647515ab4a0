"""The Actor role: steps a vector of environments with the agent's acting function and
emits chunks of the items its adder builds. No transport code here.

With frame deduplication (``ActorSpec.frame_dedup``, stacked-frame observations such as
Atari's ``(4, 84, 84)``) the actor numbers the frames it observes and sends each once
(:mod:`distdqn.agents.frames`); its adder then keeps frame ids, not stacks (initial
priorities come from the acting passes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from distdqn.agents.base import Agent
from distdqn.agents.frames import FrameNumbering
from distdqn.config import ActorConfig, EnvConfig
from distdqn.core import Chunk, flat_params, load_flat_params
from distdqn.roles.env_runner import EnvRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActorSpec:
    """Identity and placement of one actor within the program."""

    actor_id: int
    num_actors: int
    seed: int
    """This actor's seed (derived from the root seed by the program)."""
    gamma: float
    compute_priorities: bool
    """Compute initial priorities for each chunk from the acting values (Ape-X)."""
    frame_dedup: bool = False
    """Send frames, not stacks (compact chunks; stacked-frame observations only)."""


class Actor:
    """Steps ``env.envs_per_actor`` sub-envs in lock-step with one batched forward pass.

    The envs (:class:`~distdqn.roles.env_runner.EnvRunner`) reset and reseed themselves
    with seeds from the actor's generator, which also drives exploration; an actor's state
    is so restorable exactly (:meth:`state_dict`).

    Args:
        spec: identity, seed, gamma.
        env_cfg: which env and how many copies.
        cfg: actor config (exploration, chunk size, parameter sync).
        agent: the agent (its acting function and adder).
        network: the actor's own copy of the agent's network (evaluated under
            ``torch.inference_mode``).
    """

    def __init__(self, spec: ActorSpec, env_cfg: EnvConfig, cfg: ActorConfig, agent: Agent, network: nn.Module,
                 runner: Any = None):
        self.spec, self.env_cfg, self.cfg = spec, env_cfg, cfg
        self.net = network
        self.net.eval()
        self.rng = np.random.default_rng([spec.seed, 7])
        self.param_version = -1
        self._since_sync = 0
        self.frame_dedup = bool(spec.frame_dedup)
        self.runner = runner if runner is not None else EnvRunner(env_cfg, self.rng, owner=f"actor {spec.actor_id}")
        self.num_envs = self.runner.num_envs
        self.obs_shape, self.obs_dtype = self.runner.obs_shape, self.runner.obs_dtype
        # Frame ids: one stream per actor instance (the seed differs per restart generation).
        stream = (int(spec.actor_id) << 32) | (int(spec.seed) & 0xFFFFFFFF)
        self.frames = FrameNumbering(self.num_envs, self.obs_shape, self.obs_dtype, stream) if self.frame_dedup \
            else None
        self.adder = agent.make_adder(self.num_envs, self.frame_dedup, spec.compute_priorities)
        self._obs = self._started(self.runner.reset_all())
        self.policy = agent.make_policy(self.net, self._obs, actor_id=spec.actor_id, num_actors=spec.num_actors,
                                        rng=self.rng, compute_values=spec.compute_priorities)
        self._episode_returns: list[float] = []
        self._episode_lengths: list[int] = []
        self._chunk_env_steps = 0
        self._chunk_restarts = 0
        self._chunk_trigger = agent.chunk_trigger(cfg.chunk_size, self.num_envs)
        # A recurrent policy hears of every step (its previous action and reward, episode ends).
        self._after_step = getattr(self.policy, "after_step", None)
        self._reset_state = getattr(self.policy, "reset_state", None)  # and starts over with a new env

    def _started(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` of sub-envs that all just started an episode (their reset frames numbered)."""
        if self.frames is not None:
            self.frames.ids = self.frames.episode_starts(obs)
        return obs

    # ------------------------------------------------------------------ counters

    @property
    def steps(self) -> int:
        """Vector steps taken."""
        return self.runner.steps

    @property
    def env_steps(self) -> int:
        """Sub-env steps taken."""
        return self.runner.env_steps

    @property
    def env_restarts(self) -> int:
        """Envs recreated after raising."""
        return self.runner.env_restarts

    @property
    def envs(self):
        return self.runner.envs

    @property
    def frame_stream(self) -> int | None:
        return None if self.frames is None else self.frames.stream

    @frame_stream.setter
    def frame_stream(self, stream: int) -> None:
        assert self.frames is not None
        self.frames.stream = int(stream)

    @property
    def obs(self) -> np.ndarray:
        """``[E, *obs_shape]`` the observations the next actions are for."""
        return self._obs

    def epsilons(self) -> np.ndarray:
        """``[E]`` the exploration rate of each sub-env now."""
        return self.policy.epsilons(self.env_steps)

    def epsilon(self) -> float:
        """The exploration rate this actor uses now (mean over its sub-envs)."""
        return self.policy.epsilon(self.env_steps)

    # ------------------------------------------------------------------ parameters

    def set_params(self, version: int, flat: np.ndarray) -> None:
        """Load a newer flat parameter vector (layout of :func:`distdqn.core.flat_params`)."""
        load_flat_params(self.net, flat)
        self.param_version = int(version)
        self._since_sync = 0

    def wants_params(self) -> bool:
        """True once ``param_sync_period`` steps have passed since the last sync."""
        return self.param_version < 0 or self._since_sync >= self.cfg.param_sync_period

    def mark_synced(self) -> None:
        """Called when a sync found nothing newer."""
        self._since_sync = 0

    def maybe_sync(self, fetch: Callable[[int], tuple[int, np.ndarray] | None]) -> None:
        """If a sync is due, ``fetch(newer_than=param_version)`` and load what it returns
        (``(version, flat)``, or None when nothing newer exists). ``fetch`` is the transport's
        read: the parameter server in-process, shared memory across processes."""
        if not self.wants_params():
            return
        got = fetch(self.param_version)
        if got is None:
            self.mark_synced()
        else:
            self.set_params(*got)

    # ------------------------------------------------------------------ stepping

    def tick(self, fetch: Callable[[int], tuple[int, np.ndarray] | None]) -> Chunk | None:
        """What an actor does per step, in every runtime: sync parameters if due (``fetch``,
        as for :meth:`maybe_sync`), then one vector step (:meth:`step`)."""
        self.maybe_sync(fetch)
        return self.step()

    def step(self) -> Chunk | None:
        """One vector step. Returns a chunk once ``chunk_size`` items are ready, else None."""
        actions = self.choose()
        return self.observe(actions, self.runner.step(actions))

    def choose(self, q: np.ndarray | None = None) -> np.ndarray:
        """``[E]`` int64 actions for the current observations: from this actor's own forward
        pass, or from ``q`` (``[E, A]`` outputs of a pass made elsewhere, e.g. SEED's central
        inference)."""
        if q is None:
            return self.policy.act(self._obs, self.runner.env_steps)
        return self.policy.choose(q, self.runner.env_steps)

    def observe(self, actions: np.ndarray, out: tuple | None) -> Chunk | None:
        """Record the runner's result ``out`` of ``actions`` (None: the env raised and was
        recreated); returns a chunk once ``chunk_size`` items are ready, else None."""
        obs = self._obs
        if out is None:  # the env raised and was recreated: its open items are gone
            self._chunk_restarts += 1
            self._obs = self._started(self.runner.obs_after_restart)
            self.adder.reset()
            if self._reset_state is not None:
                self._reset_state()
            return None
        next_obs, reward, terminated, truncated, info = out
        self._since_sync += 1
        self._chunk_env_steps += self.num_envs
        done = np.logical_or(terminated, truncated)
        any_done = bool(done.any())
        values = self.policy.acting_values(actions)
        if any_done:
            values.update(self.policy.final_values(next_obs, terminated, truncated))
        reward = np.asarray(reward, dtype=np.float64)
        if self.frames is not None:
            next_ids = self.frames.step(obs, next_obs)
            self.adder.add(obs, actions, reward, next_obs, terminated, truncated, obs_id=self.frames.ids,
                           next_obs_id=next_ids, **values)
            self.frames.ids = next_ids
        else:
            self.adder.add(obs, actions, reward, next_obs, terminated, truncated, **values)
        if any_done:
            returns, lengths = self.runner.episode_stats(info, done)
            self._episode_returns += returns
            self._episode_lengths += lengths
            reset_obs = self.runner.reset_done(done)
            next_obs = np.where(done.reshape(-1, *([1] * (next_obs.ndim - 1))), reset_obs, next_obs)
            if self.frames is not None:
                self.frames.ids[done] = self.frames.episode_starts(reset_obs[done])
        if self._after_step is not None:
            self._after_step(actions, reward, done)
        self._obs = next_obs
        if self.adder.num_recorded >= self._chunk_trigger:
            return self._make_chunk()
        return None

    def flush(self) -> Chunk | None:
        """The items complete so far as a (short) chunk, with the env steps and episodes
        since the last chunk; None when there is nothing. For a graceful stop: items still
        waiting for their n-th step stay behind (an episode cut short has no n-step target)."""
        if self.adder.num_recorded == 0 and self._chunk_env_steps == 0:
            return None
        return self._make_chunk(empty_ok=True)

    def _make_chunk(self, empty_ok: bool = False) -> Chunk | None:
        """The complete items as a chunk; with none, None (or, ``empty_ok``, a chunk of no
        items that still carries the env steps and episodes since the last one)."""
        items = self.adder.pop_items()
        frames = None
        if items is None:
            if not empty_ok:
                return None
            data, priority = {}, None  # frames not yet sent belong to items never to be sent
        else:
            data, priority = items
            frames = self.frames.take() if self.frames is not None else None
        chunk = Chunk(data=data, spec=self.adder.spec, priority=priority, actor_id=self.spec.actor_id,
                      param_version=self.param_version, episode_returns=self._episode_returns,
                      episode_lengths=self._episode_lengths, env_steps=self._chunk_env_steps,
                      env_restarts=self._chunk_restarts, frames=frames, epsilon=self.epsilon())
        self._episode_returns, self._episode_lengths = [], []
        self._chunk_env_steps = 0
        self._chunk_restarts = 0
        return chunk

    def close(self) -> None:
        self.runner.close()

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        """Everything needed to continue bit-exactly: RNG, counters, the adder's open items,
        and each sub-env's (last seed, actions since that seeded reset). Tensors and Python
        scalars only."""
        rng_state = self.rng.bit_generator.state
        r = self.runner
        return {
            "rng": {"state": int(rng_state["state"]["state"]), "inc": int(rng_state["state"]["inc"]),
                    "has_uint32": int(rng_state["has_uint32"]), "uinteger": int(rng_state["uinteger"])},
            "param_version": self.param_version,
            "params": torch.from_numpy(flat_params(self.net)),
            "steps": r.steps,
            "env_steps": r.env_steps,
            "env_restarts": r.env_restarts,
            "since_sync": self._since_sync,
            "episode_seed": torch.from_numpy(r.episode_seeds.copy()),
            "actions": [torch.from_numpy(a) for a in r.episode_actions()],
            "acc": self.adder.state_dict(),
            "obs": torch.from_numpy(np.ascontiguousarray(self._obs)),
            "episode_returns": list(self._episode_returns),
            "episode_lengths": list(self._episode_lengths),
            "chunk_env_steps": self._chunk_env_steps,
            "chunk_restarts": self._chunk_restarts,
            "frames": self.frames.state_dict() if self.frames is not None else {},
            "policy": self.policy.state_dict() if hasattr(self.policy, "state_dict") else {},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (:meth:`EnvRunner.restore` re-creates the episodes).
        With ``env.backend: envpool`` everything but the episodes is restored: the open items
        are dropped and every sub-env starts a new episode.

        Raises:
            ValueError: the checkpoint and the actor disagree on frame deduplication.
        """
        r = state["rng"]
        bg = self.rng.bit_generator
        st = bg.state
        st["state"] = {"state": r["state"], "inc": r["inc"]}
        st["has_uint32"], st["uinteger"] = r["has_uint32"], r["uinteger"]
        bg.state = st
        load_flat_params(self.net, state["params"])
        self.param_version = int(state["param_version"])
        self.policy.reset_schedule()
        self._since_sync = int(state["since_sync"])
        replayed = self.runner.restore(state["steps"], state["env_steps"], state["env_restarts"],
                                       state["episode_seed"].numpy(), [t.numpy().astype(np.int64)
                                                                       for t in state["actions"]])
        self.adder.load_state_dict(state["acc"])
        self._obs = state["obs"].numpy().copy()
        self._episode_returns = list(state["episode_returns"])
        self._episode_lengths = list(state["episode_lengths"])
        self._chunk_env_steps = int(state["chunk_env_steps"])
        self._chunk_restarts = int(state["chunk_restarts"])
        fr = state.get("frames") or {}
        if self.frame_dedup != bool(fr):
            raise ValueError("actor checkpoint and actor disagree on frame deduplication (replay.frame_dedup; "
                             "resume with the run's own setting, e.g. --set replay.frame_dedup=off)")
        if self.frames is not None:
            self.frames.load_state_dict(fr)
        if state.get("policy") and hasattr(self.policy, "load_state_dict"):  # a recurrent policy's state
            self.policy.load_state_dict(state["policy"])
        if not replayed:
            self.adder.reset()
            self._obs = self._started(self.runner.reset_all())
            if self._reset_state is not None:
                self._reset_state()
