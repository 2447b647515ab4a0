"""The Actor role: steps a vector of environments with an epsilon-greedy copy of the
Q-network and emits chunks of n-step transitions. No transport code here.

Frame deduplication (``ActorSpec.frame_dedup``, stacked-frame observations such as Atari's
``(4, 84, 84)``): the actor numbers every new frame it observes (the newest frame of each
sub-env's observation after each step, and the reset frame at each episode start) with its
own *actor frame id*, and sends compact chunks: the new frames since the previous chunk,
each with the id of its predecessor in the episode, plus per transition the ids of the
newest frames of ``obs`` and ``next_obs`` (:class:`~distdqn.core.FrameBlock`). Its n-step
windows keep frame ids, not stacks (initial priorities come from the acting passes). It checks every
step that observations really are such stacks (``next_obs[:-1] == obs[1:]``, and a reset
stack repeats one frame), since the replay rebuilds them on that assumption.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from distdqn.config import ActorConfig, EnvConfig
from distdqn.core import FrameBlock, TransitionChunk, flat_params, load_flat_params
from distdqn.envs import is_atari, make_vector_env
from distdqn.exploration import apex_epsilons, linear_epsilon
from distdqn.networks import trace_for_inference
from distdqn.nstep import NStepAccumulator

log = logging.getLogger(__name__)

RESEED_STEPS = 1_000
"""Vector steps after a sub-env's seeded reset from which its next episode end reseeds it:
bounds the actions an exact resume replays per sub-env."""


@dataclass(frozen=True)
class ActorSpec:
    """Identity and placement of one actor within the program."""

    actor_id: int
    num_actors: int
    seed: int
    """This actor's seed (derived from the root seed by the program)."""
    gamma: float
    compute_priorities: bool
    """Compute initial |TD error| priorities for each chunk (Ape-X)."""
    frame_dedup: bool = False
    """Send frames, not stacks (compact chunks; stacked-frame observations only)."""


class Actor:
    """Steps ``env.envs_per_actor`` sub-envs in lock-step with one batched forward pass.

    Sub-envs are reset by the actor itself (Gymnasium ``AutoresetMode.DISABLED``). A reset
    takes a seed drawn from the actor's RNG when the sub-env starts, and again at the first
    episode end :data:`RESEED_STEPS` or more vector steps after its last seeded reset; other
    resets are unseeded and continue the env's own RNG (a seeded reset builds a new
    generator, a large part of a short CartPole episode's cost). An env's state is so a
    function of (last seed, actions since that reset, with an unseeded reset after each
    episode end): this is what makes exact resume possible. (With ``env.backend: envpool``
    only the first seed is used, see :mod:`distdqn.envpool_backend`.)

    Args:
        spec: identity, seed, gamma.
        env_cfg: which env and how many copies.
        cfg: actor config (n-step, exploration, chunk size).
        network: a Q-network (the actor's own copy; evaluated under ``torch.inference_mode``).
    """

    def __init__(self, spec: ActorSpec, env_cfg: EnvConfig, cfg: ActorConfig, network: nn.Module):
        self.spec, self.env_cfg, self.cfg = spec, env_cfg, cfg
        self.net = network
        self.net.eval()
        self.num_envs = env_cfg.envs_per_actor
        self.rng = np.random.default_rng([spec.seed, 7])
        self._env_index = np.arange(self.num_envs)
        self.param_version = -1
        self.steps = 0  # vector steps
        self.env_steps = 0  # sub-env steps
        self.env_restarts = 0
        self._since_sync = 0
        if cfg.epsilon_schedule == "apex":
            total = spec.num_actors * self.num_envs
            eps = apex_epsilons(total, cfg.apex_epsilon, cfg.apex_alpha)
            self._apex_eps = eps[spec.actor_id * self.num_envs : (spec.actor_id + 1) * self.num_envs]
        else:
            self._apex_eps = None
        self.frame_dedup = bool(spec.frame_dedup)
        # Frame ids: one stream per actor instance (the seed differs per restart generation).
        self.frame_stream = (int(spec.actor_id) << 32) | (int(spec.seed) & 0xFFFFFFFF)
        self._frame_next = 0  # next actor frame id
        self._frame_ids = np.zeros(self.num_envs, dtype=np.int64)  # id of each sub-env's newest frame
        self._pending_frames: list[np.ndarray] = []
        self._pending_prev: list[np.ndarray] = []
        self._pending_start = 0  # actor frame id of the first frame not yet sent
        self._make_envs()
        if self.frame_dedup and len(self.obs_shape) < 2:
            raise ValueError(f"frame_dedup needs stacked-frame observations, got shape {self.obs_shape}")
        self._obs, self._acc = self._reset_all()
        # The acting passes go through `policy`: a trace of `net` sharing its parameters.
        self.policy = trace_for_inference(self.net, torch.from_numpy(self._obs)) if cfg.trace_network else self.net
        self._episode_returns: list[float] = []
        self._episode_lengths: list[int] = []
        self._chunk_env_steps = 0
        self._chunk_restarts = 0
        self._chunk_trigger = cfg.chunk_size + self.num_envs * cfg.n_step
        self._eps_value, self._eps = float("nan"), np.zeros(self.num_envs)
        self._eps_final = False  # the linear decay is over: epsilon stays at epsilon_end
        # RecordEpisodeStatistics sits on the raw env: for Atari it counts emulator frames.
        self._frames_per_step = env_cfg.frame_skip if is_atari(env_cfg.id) else 1

    # ------------------------------------------------------------------ envs

    def _make_envs(self) -> None:
        self.envs = make_vector_env(self.env_cfg, self.num_envs)
        space = self.envs.single_observation_space
        self.obs_shape, self.obs_dtype = tuple(space.shape), space.dtype
        self.num_actions = int(self.envs.single_action_space.n)
        self._episode_seed = np.zeros(self.num_envs, dtype=np.int64)  # seed of the last seeded reset
        # Actions since each sub-env's last seeded reset (exact resume replays them): one [E]
        # array per vector step, from vector step `_log_base` on; sub-env i was last reset
        # with a seed at vector step `_episode_start[i]`.
        self._action_log: list[np.ndarray] = []
        self._log_base = self.steps
        self._episode_start = np.full(self.num_envs, self.steps, dtype=np.int64)

    def _new_seeds(self, mask: np.ndarray, force: bool = True) -> list[int | None]:
        """Seeds for resetting the ``mask`` sub-envs: a new one where ``force`` or the last
        seeded reset is :data:`RESEED_STEPS` vector steps old, else None (unseeded)."""
        seeds: list[int | None] = [None] * self.num_envs
        if not force:
            mask = mask & (self.steps - self._episode_start >= RESEED_STEPS)
            if not mask.any():  # most episode ends: nothing to seed, nothing to trim
                return seeds
        for i in np.flatnonzero(mask):
            s = int(self.rng.integers(2**31 - 1))
            self._episode_seed[i] = s
            seeds[i] = s
        self._episode_start[mask] = self.steps
        drop = int(self._episode_start.min()) - self._log_base
        if drop > 256:  # steps no open episode needs any more
            del self._action_log[:drop]
            self._log_base += drop
        return seeds

    def _episode_actions(self) -> list[np.ndarray]:
        """Per sub-env, ``[steps]`` int64 actions since its last seeded reset."""
        log_ = np.stack(self._action_log) if self._action_log else np.zeros((0, self.num_envs), dtype=np.int64)
        return [log_[int(self._episode_start[i]) - self._log_base :, i].astype(np.int64) for i in range(self.num_envs)]

    def _reset_all(self) -> tuple[np.ndarray, NStepAccumulator]:
        mask = np.ones(self.num_envs, dtype=bool)
        obs, _ = self.envs.reset(seed=self._new_seeds(mask))
        acc = NStepAccumulator(self.num_envs, self.cfg.n_step, self.spec.gamma, self.obs_shape, self.obs_dtype,
                               track_ids=self.frame_dedup, track_q=self.spec.compute_priorities,
                               keep_obs=not self.frame_dedup)
        obs = np.array(obs)
        if self.frame_dedup:
            self._frame_ids = self._episode_starts(obs)
        return obs, acc

    def _recreate_envs(self, exc: BaseException) -> None:
        self.env_restarts += 1
        self._chunk_restarts += 1
        log.warning("actor %d: env raised %r; recreating it (restart %d)", self.spec.actor_id, exc, self.env_restarts)
        try:
            self.envs.close()
        except Exception:  # a crashed env may fail to close; it is dropped either way
            pass
        self._make_envs()
        mask = np.ones(self.num_envs, dtype=bool)
        obs, _ = self.envs.reset(seed=self._new_seeds(mask))
        self._obs = np.array(obs)
        if self.frame_dedup:
            self._frame_ids = self._episode_starts(self._obs)
        self._acc.reset()

    # ------------------------------------------------------------------ frames (frame_dedup)

    def _add_frames(self, frames: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
        """Number ``frames`` ([m, *frame_shape]) with new actor frame ids and queue them for the
        next chunk; ``prev`` their predecessors' ids (None: episode starts, their own ids)."""
        m = frames.shape[0]
        ids = np.arange(self._frame_next, self._frame_next + m, dtype=np.int64)
        self._pending_frames.append(np.array(frames, copy=True))
        self._pending_prev.append(ids.copy() if prev is None else np.array(prev, dtype=np.int64))
        self._frame_next += m
        return ids

    def _episode_starts(self, stacks: np.ndarray) -> np.ndarray:
        """Queue the reset frames of ``stacks`` ([m, k, ...], each the reset frame repeated,
        FrameStackObservation's "reset" padding); returns their ids."""
        if not (stacks == stacks[:, -1:]).all():
            raise ValueError("replay.frame_dedup: a reset observation is not one frame repeated "
                             "(FrameStackObservation with 'reset' padding); set replay.frame_dedup=off")
        return self._add_frames(stacks[:, -1], None)

    def _step_frames(self, obs: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """Queue the newest frame of every sub-env's ``next_obs``; returns their ids."""
        if not np.array_equal(next_obs[:, :-1], obs[:, 1:]):
            raise ValueError("replay.frame_dedup: observations are not frame stacks (next_obs[:-1] != obs[1:]); "
                             "set replay.frame_dedup=off")
        return self._add_frames(next_obs[:, -1], self._frame_ids)

    def _take_frames(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The queued frames, their links and the first one's id; clears the queue."""
        start = self._pending_start
        if self._pending_frames:
            frames = np.concatenate(self._pending_frames)
            prev = np.concatenate(self._pending_prev)
        else:
            frames = np.zeros((0, *self.obs_shape[1:]), dtype=self.obs_dtype)
            prev = np.zeros(0, dtype=np.int64)
        self._pending_frames, self._pending_prev = [], []
        self._pending_start = self._frame_next
        return frames, prev, start

    # ------------------------------------------------------------------ policy

    def epsilons(self) -> np.ndarray:
        """``[E]`` current epsilon of each sub-env."""
        if self._apex_eps is not None:
            return self._apex_eps
        if self._eps_final:
            return self._eps
        c = self.cfg
        # Global env steps estimated as this actor's steps times the number of actors.
        steps = self.env_steps * self.spec.num_actors
        eps = linear_epsilon(steps, c.epsilon_start, c.epsilon_end, c.epsilon_decay_steps)
        if eps != self._eps_value:  # constant once the decay is over: keep the array
            self._eps_value, self._eps = eps, np.full(self.num_envs, eps)
        self._eps_final = steps >= c.epsilon_decay_steps
        return self._eps

    def select_actions(self, obs: np.ndarray) -> np.ndarray:
        """Epsilon-greedy actions ``[E]`` int64 from one batched forward pass."""
        with torch.inference_mode():
            q = self.policy(torch.from_numpy(obs)).numpy()
        greedy = q.argmax(axis=1)
        self._q = q
        # One uniform draw per env decides both: explore if u < eps, and then u / eps is
        # itself uniform on [0, 1), which picks the random action.
        eps = self.epsilons()
        u = self.rng.random(self.num_envs)
        explore = u < eps
        if not explore.any():
            return greedy.astype(np.int64, copy=False)
        random_actions = np.minimum((u / np.maximum(eps, 1e-12) * self.num_actions).astype(np.int64),
                                    self.num_actions - 1)
        return np.where(explore, random_actions, greedy).astype(np.int64)

    def _acting_values(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """For the initial priorities, from the forward pass that chose ``actions``: ``q_sa``
        ``[E]`` float32 Q(obs, action) and ``v_obs`` ``[E]`` max_a Q(obs, a); empty when
        priorities are not computed."""
        if not self.spec.compute_priorities:
            return {}
        q = self._q
        return {"q_sa": q[self._env_index, actions], "v_obs": q.max(axis=1)}

    def _final_values(self, next_obs: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> dict:
        """``v_final``: max_a Q of the final observations of truncated (not terminated)
        episodes, the only bootstrap values no acting pass will compute; one forward pass
        over just those, and only when there are any."""
        if not self.spec.compute_priorities:
            return {}
        cut = np.logical_and(truncated, np.logical_not(terminated))
        if not cut.any():
            return {}
        v = np.zeros(self.num_envs, dtype=np.float32)
        with torch.inference_mode():
            v[cut] = self.policy(torch.from_numpy(np.ascontiguousarray(next_obs[cut]))).max(dim=1).values.numpy()
        return {"v_final": v}

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

    def step(self) -> TransitionChunk | None:
        """One vector step. Returns a chunk once ``chunk_size`` transitions are ready, else None."""
        obs = self._obs
        actions = self.select_actions(obs)
        try:
            next_obs, reward, terminated, truncated, info = self.envs.step(actions)
        except Exception as exc:  # noqa: BLE001 - any env failure is recoverable by recreating it
            self._recreate_envs(exc)
            return None
        self.steps += 1
        self._since_sync += 1
        self.env_steps += self.num_envs
        self._chunk_env_steps += self.num_envs
        self._action_log.append(actions)
        next_obs = np.asarray(next_obs)
        done = np.logical_or(terminated, truncated)
        any_done = bool(done.any())
        values = self._acting_values(actions)
        if any_done:
            values.update(self._final_values(next_obs, terminated, truncated))
        if self.frame_dedup:
            next_ids = self._step_frames(obs, next_obs)
            self._acc.add(obs, actions, np.asarray(reward, dtype=np.float64), next_obs, terminated, truncated,
                          obs_id=self._frame_ids, next_obs_id=next_ids, **values)
            self._frame_ids = next_ids
        else:
            self._acc.add(obs, actions, np.asarray(reward, dtype=np.float64), next_obs, terminated, truncated,
                          **values)
        if any_done:
            self._record_episodes(info, done)
            reset_obs, _ = self.envs.reset(seed=self._new_seeds(done, force=False), options={"reset_mask": done})
            reset_obs = np.asarray(reset_obs)
            next_obs = np.where(done.reshape(-1, *([1] * (next_obs.ndim - 1))), reset_obs, next_obs)
            if self.frame_dedup:
                self._frame_ids[done] = self._episode_starts(reset_obs[done])
        self._obs = next_obs
        # The windows are resolved only here: num_recorded bounds the complete transitions
        # from above by at most E * n, so the chunk holds at least chunk_size of them.
        if self._acc.num_recorded >= self._chunk_trigger:
            return self._make_chunk()
        return None

    def _record_episodes(self, info: dict, done: np.ndarray) -> None:
        ep = info.get("episode")
        if ep is None:
            return
        mask = info.get("_episode", done)
        per_step = self._frames_per_step
        for i in np.flatnonzero(mask & done):
            self._episode_returns.append(float(ep["r"][i]))
            self._episode_lengths.append(int(ep["l"][i]) // per_step)

    def _make_chunk(self) -> TransitionChunk | None:
        cols = self._acc.pop()
        if cols is None:
            return None
        obs, action, reward, discount, next_obs = cols[:5]
        chunk = TransitionChunk(
            obs=obs,
            action=action,
            reward=reward,
            discount=discount,
            next_obs=next_obs,
            actor_id=self.spec.actor_id,
            param_version=self.param_version,
            episode_returns=self._episode_returns,
            episode_lengths=self._episode_lengths,
            env_steps=self._chunk_env_steps,
            env_restarts=self._chunk_restarts,
        )
        self._episode_returns, self._episode_lengths = [], []
        self._chunk_env_steps = 0
        self._chunk_restarts = 0
        if self.spec.compute_priorities:
            # |R + gamma^m V(s') - Q(s, a)| from the acting passes' values (Ape-X, sec. 3).
            q_sa, next_v = cols[-2], cols[-1]
            chunk.priority = np.abs(reward + discount * next_v - q_sa).astype(np.float32)
        if self.frame_dedup:
            frames, prev, start = self._take_frames()
            chunk.frames = FrameBlock(frames=frames, prev=prev, start=start, stream=self.frame_stream)
            chunk.obs_frame, chunk.next_frame = cols[5], cols[6]
            chunk.obs = chunk.next_obs = None  # frames, not stacks
        return chunk

    def initial_priorities(self, chunk: TransitionChunk) -> np.ndarray:
        """``[T]`` float32 |R + gamma^n max_a Q(s', a) - Q(s, a)| with the actor's current
        network over the chunk's whole observations, two forward passes (Ape-X, Horgan et
        al. 2018, sec. 3). The actor itself takes the same values from its acting passes
        (see :mod:`distdqn.nstep`, ``track_q``); this is the reference computation.

        Raises:
            ValueError: a compact (frame-deduplicated) chunk, which has no whole observations.
        """
        if chunk.obs is None or chunk.next_obs is None:
            raise ValueError("initial_priorities needs a chunk with whole observations, not a compact one")
        t = len(chunk)
        with torch.inference_mode():
            q = self.net(torch.from_numpy(np.concatenate([chunk.obs, chunk.next_obs], axis=0))).numpy()
        next_max = q[t:].max(axis=1)
        q_taken = q[np.arange(t), chunk.action]
        return np.abs(chunk.reward + chunk.discount * next_max - q_taken).astype(np.float32)

    def flush(self) -> TransitionChunk | None:
        """Whatever transitions are pending, staged ones completed with one forward pass over
        the current observations, as a chunk (or None)."""
        if self.spec.compute_priorities and self._acc.num_staged:
            with torch.inference_mode():
                self._acc.resolve(self.policy(torch.from_numpy(self._obs)).max(dim=1).values.numpy())
        return self._make_chunk()

    def close(self) -> None:
        self.envs.close()

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        """Everything needed to continue bit-exactly: RNG, counters, n-step windows, and each
        sub-env's (last seed, actions since that seeded reset). Tensors and Python scalars only."""
        rng_state = self.rng.bit_generator.state
        return {
            "rng": {"state": int(rng_state["state"]["state"]), "inc": int(rng_state["state"]["inc"]),
                    "has_uint32": int(rng_state["has_uint32"]), "uinteger": int(rng_state["uinteger"])},
            "param_version": self.param_version,
            "params": torch.from_numpy(flat_params(self.net)),
            "steps": self.steps,
            "env_steps": self.env_steps,
            "env_restarts": self.env_restarts,
            "since_sync": self._since_sync,
            "episode_seed": torch.from_numpy(self._episode_seed.copy()),
            "actions": [torch.from_numpy(a) for a in self._episode_actions()],
            "acc": self._acc.state_dict(),
            "obs": torch.from_numpy(np.ascontiguousarray(self._obs)),
            "episode_returns": list(self._episode_returns),
            "episode_lengths": list(self._episode_lengths),
            "chunk_env_steps": self._chunk_env_steps,
            "chunk_restarts": self._chunk_restarts,
            "frames": self._frames_state(),
        }

    def _frames_state(self) -> dict:
        """Frame numbering and the frames not yet sent (frame_dedup), else empty."""
        if not self.frame_dedup:
            return {}
        frames, prev = (np.concatenate(self._pending_frames), np.concatenate(self._pending_prev)) \
            if self._pending_frames else (np.zeros((0, *self.obs_shape[1:]), self.obs_dtype), np.zeros(0, np.int64))
        return {"stream": self.frame_stream, "next": self._frame_next, "ids": torch.from_numpy(self._frame_ids.copy()),
                "pending_start": self._pending_start, "pending_frames": torch.from_numpy(frames),
                "pending_prev": torch.from_numpy(prev)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`, re-creating each sub-env's state by resetting it with its
        last seed and replaying its actions, with an unseeded reset after each episode end, as
        :meth:`step` does (exact for envs whose randomness is seeded by ``reset(seed=...)``,
        which includes classic control and ALE). With ``env.backend:
        envpool`` (seeds fixed at creation) everything but the episodes is restored: the
        open n-step windows are dropped and every sub-env starts a new episode."""
        r = state["rng"]
        bg = self.rng.bit_generator
        st = bg.state
        st["state"] = {"state": r["state"], "inc": r["inc"]}
        st["has_uint32"], st["uinteger"] = r["has_uint32"], r["uinteger"]
        bg.state = st
        load_flat_params(self.net, state["params"])
        self.param_version = int(state["param_version"])
        self.steps, self.env_steps = int(state["steps"]), int(state["env_steps"])
        self._eps_value, self._eps_final = float("nan"), False
        self.env_restarts, self._since_sync = int(state["env_restarts"]), int(state["since_sync"])
        self._episode_seed = state["episode_seed"].numpy().copy()
        actions = [t.numpy().astype(np.int64) for t in state["actions"]]
        longest = max((len(a) for a in actions), default=0)
        self._log_base = self.steps - longest
        self._episode_start = np.array([self.steps - len(a) for a in actions], dtype=np.int64)
        log_ = np.zeros((longest, self.num_envs), dtype=np.int64)
        for i, a in enumerate(actions):
            log_[longest - len(a):, i] = a
        self._action_log = list(log_)
        sub_envs = getattr(self.envs, "envs", None)  # SyncVectorEnv's own envs; envpool has none
        for i, env in enumerate(sub_envs or []):
            env.reset(seed=int(self._episode_seed[i]))
            for a in actions[i].tolist():
                _, _, terminated, truncated, _ = env.step(a)
                if terminated or truncated:
                    env.reset(options={})  # as SyncVectorEnv resets a masked sub-env
        self._acc.load_state_dict(state["acc"])
        self._obs = state["obs"].numpy().copy()
        self._episode_returns = list(state["episode_returns"])
        self._episode_lengths = list(state["episode_lengths"])
        self._chunk_env_steps = int(state["chunk_env_steps"])
        self._chunk_restarts = int(state["chunk_restarts"])
        fr = state.get("frames") or {}
        if self.frame_dedup != bool(fr):
            raise ValueError("actor checkpoint and actor disagree on frame deduplication (replay.frame_dedup)")
        if fr:
            self.frame_stream, self._frame_next = int(fr["stream"]), int(fr["next"])
            self._frame_ids = fr["ids"].numpy().copy()
            self._pending_start = int(fr["pending_start"])
            frames = fr["pending_frames"].numpy().copy()
            self._pending_frames = [frames] if frames.shape[0] else []
            self._pending_prev = [fr["pending_prev"].numpy().copy()] if frames.shape[0] else []
        if sub_envs is None:
            self._start_new_episodes()

    def _start_new_episodes(self) -> None:
        """After loading a checkpoint into envs that cannot re-create an episode from its seed
        (``env.backend: envpool``): drop the open n-step windows and start every sub-env anew."""
        log.warning("actor %d: env.backend=%s cannot replay the checkpointed episodes; starting new ones "
                    "(exact resume needs env.backend=gymnasium)", self.spec.actor_id, self.env_cfg.backend)
        self._acc.reset()
        obs, _ = self.envs.reset(seed=self._new_seeds(np.ones(self.num_envs, dtype=bool)))
        self._obs = np.array(obs)
        if self.frame_dedup:
            self._frame_ids = self._episode_starts(self._obs)

