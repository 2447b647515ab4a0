"""Replay throughput and memory with actor-shaped synthetic experience: rows (e) and (f)
of ``distdqn bench`` in its env mode (:mod:`distdqn.bench_env`), and
``benchmarks/replay_memory.py``.

- :class:`SyntheticActor`: what actors send, without envs: compact frame chunks
  (:class:`~distdqn.core.FrameBlock` + frame ids, n-step windows over several sub-envs,
  random episode lengths) for frame-deduplicated replay, or whole-observation chunks.
- :func:`measure_replay`: fill a replay of ``capacity`` transitions (RSS growth of the
  process, time inside ``Replay.insert``), then time ``sample(B) + update_priorities(B)``,
  each next to a bare numpy ceiling. Meant to run in a fresh (spawned) process so that
  the resident-set growth is the replay's alone.

Only touched pages count in RSS: the replay's arrays are ``np.zeros`` (untouched pages cost
nothing), so after a fill the growth is what the replay really holds.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from distdqn.agents.dqn.spec import transition_chunk, transition_spec
from distdqn.config import ReplayConfig
from distdqn.core import Chunk, FrameBlock
from distdqn.replay import Replay, make_replay

FRAME = (84, 84)
FRAME_BYTES = FRAME[0] * FRAME[1]
"""One 84x84 uint8 frame: 7,056 bytes, the bound per transition of frame-deduplicated replay."""

__all__ = ["FRAME", "FRAME_BYTES", "ReplaySpec", "SyntheticActor", "fill", "measure_replay", "rss_bytes"]


def rss_bytes() -> int:
    """Resident set size of this process (``VmRSS`` of ``/proc/self/status``), bytes.

    Raises:
        RuntimeError: no ``/proc/self/status`` VmRSS line (not Linux).
    """
    rss = proc_kb_field("/proc/self/status", "VmRSS:")
    if rss is None:
        raise RuntimeError("no VmRSS in /proc/self/status (RSS is measured on Linux only)")
    return rss


def proc_kb_field(path: str, key: str) -> int | None:
    """Bytes of a ``key: N kB`` line of a Linux ``/proc`` file, or None when absent."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class SyntheticActor:
    """An actor's frame numbering and n-step windows over ``envs`` sub-envs (see
    :class:`distdqn.roles.actor.Actor`), with random episode lengths (uniform in
    ``[mean/4, 7 mean/4]``) and synthetic frames.

    Args:
        actor_id: also the frame stream (``actor_id << 32 | 12345``).
        envs: sub-envs.
        n_step: transitions span ``n_step`` steps (fewer at episode ends, all to the last frame).
        mean_episode: mean episode length in agent steps.
        chunk_size: transitions per chunk (at least; a step adds up to ``envs``).
        rng: randomness (episode lengths, actions, rewards, priorities, frames).
        frame_pool: ``[P, 84, 84]`` uint8 frames handed out in turn (cheap); None draws
            every frame at random (each frame distinct, slower). Either way every stored
            page is written, which is what RSS measures.
        num_actions: actions are drawn from ``0..num_actions-1``.
        discount: discount of a full window (``gamma ** n_step``).
    """

    def __init__(self, actor_id: int, envs: int, n_step: int, mean_episode: int, chunk_size: int,
                 rng: np.random.Generator, frame_pool: np.ndarray | None = None, num_actions: int = 6,
                 discount: float = 0.99**3):
        self.actor_id, self.envs, self.n, self.chunk_size, self.rng = actor_id, envs, n_step, chunk_size, rng
        self.mean_episode = mean_episode
        self.frame_pool = frame_pool
        self.num_actions, self.discount = num_actions, discount
        self._pool_pos = 0
        self.stream = (actor_id << 32) | 12345
        self.next_id = 0
        self.frames: list[np.ndarray] = []
        self.prev: list[np.ndarray] = []
        self.start = 0
        self.obs: list[int] = []
        self.nxt: list[int] = []
        self.windows: list[deque[int]] = [deque() for _ in range(envs)]
        self.cur = self._new_frames(envs, None)
        self.left = self._lengths(envs)

    def _lengths(self, m: int) -> np.ndarray:
        return self.rng.integers(max(1, self.mean_episode // 4), self.mean_episode * 7 // 4 + 1, size=m)

    def _frames(self, m: int) -> np.ndarray:
        if self.frame_pool is None:
            return self.rng.integers(0, 256, size=(m, *FRAME), dtype=np.uint8)
        p = len(self.frame_pool)
        idx = (self._pool_pos + np.arange(m)) % p
        self._pool_pos = (self._pool_pos + m) % p
        return self.frame_pool[idx]

    def _new_frames(self, m: int, prev: np.ndarray | None) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + m, dtype=np.int64)
        self.frames.append(self._frames(m))
        self.prev.append(ids if prev is None else prev.copy())
        self.next_id += m
        return ids

    def step(self) -> None:
        """One vector step: a new frame per sub-env; windows emit transitions."""
        nxt = self._new_frames(self.envs, self.cur)
        self.left -= 1
        done = self.left <= 0
        for e in range(self.envs):
            w = self.windows[e]
            w.append(int(self.cur[e]))
            if done[e]:
                while w:  # the episode's last (up to n) transitions, all to its final frame
                    self.obs.append(w.popleft())
                    self.nxt.append(int(nxt[e]))
            elif len(w) == self.n:
                self.obs.append(w.popleft())
                self.nxt.append(int(nxt[e]))
        self.cur = nxt
        if done.any():
            self.cur[done] = self._new_frames(int(done.sum()), None)
            self.left[done] = self._lengths(int(done.sum()))

    def chunk(self) -> Chunk:
        """The next compact chunk (``obs``/``next_obs`` None, frames + ids), with priorities."""
        while len(self.obs) < self.chunk_size:
            self.step()
        t = len(self.obs)
        frames, prev = np.concatenate(self.frames), np.concatenate(self.prev)
        c = transition_chunk(
            obs=None, next_obs=None,
            action=self.rng.integers(0, self.num_actions, size=t),
            reward=self.rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), size=t),
            discount=np.full(t, self.discount, np.float32),
            priority=self.rng.exponential(1.0, size=t).astype(np.float32),
            actor_id=self.actor_id,
            frames=FrameBlock(frames=frames, prev=prev, start=self.start, stream=self.stream),
            obs_frame=np.array(self.obs, np.int64), next_frame=np.array(self.nxt, np.int64),
        )
        self.start = self.next_id
        self.frames, self.prev, self.obs, self.nxt = [], [], [], []
        return c


class _StackedSource:
    """Whole-observation chunks of ``chunk_size`` random transitions, cut from a pool of
    ``pool`` pre-drawn ones (cheap), for replay without frame deduplication."""

    def __init__(self, obs_shape: tuple[int, ...], obs_dtype: np.dtype, chunk_size: int, num_actions: int,
                 discount: float, rng: np.random.Generator, pool: int = 65_536):
        self.chunk_size, self.pos, self.pool = chunk_size, 0, pool
        dt = np.dtype(obs_dtype)
        draw = (lambda n: rng.integers(0, 256, size=(n, *obs_shape)).astype(dt)) if np.issubdtype(dt, np.integer) \
            else (lambda n: rng.standard_normal((n, *obs_shape)).astype(dt))
        self.obs, self.next_obs = draw(pool), draw(pool)
        self.action = rng.integers(0, num_actions, size=pool).astype(np.int64)
        self.reward = rng.uniform(0.0, 3.0, size=pool).astype(np.float32)
        self.discount = np.where(rng.random(pool) < 0.1, 0.0, discount).astype(np.float32)
        self.priority = rng.exponential(1.0, size=pool).astype(np.float32)

    def chunk(self) -> Chunk:
        s = slice(self.pos, self.pos + self.chunk_size)
        self.pos = (self.pos + self.chunk_size) % (self.pool - self.chunk_size)
        return transition_chunk(obs=self.obs[s], action=self.action[s], reward=self.reward[s],
                               discount=self.discount[s], next_obs=self.next_obs[s], priority=self.priority[s])


def fill(replay: Replay, sources: list[Any], until: int) -> tuple[int, float, int]:
    """Insert chunks from ``sources`` round-robin until ``replay.inserted >= until``.

    Returns:
        (chunks, seconds spent inside ``Replay.insert``, frames sent: 0 for stacked chunks).
    """
    chunks, t_insert, frames = 0, 0.0, 0
    i = 0
    while replay.inserted < until:
        c = sources[i % len(sources)].chunk()
        i += 1
        frames += len(c.frames) if c.frames is not None else 0
        t0 = time.perf_counter()
        replay.insert(c)
        t_insert += time.perf_counter() - t0
        chunks += 1
    return chunks, t_insert, frames


@dataclass(frozen=True)
class ReplaySpec:
    """What :func:`measure_replay` builds and how it fills it (plain values: picklable).

    Attributes:
        capacity: transitions the replay holds (filled completely).
        obs_shape, obs_dtype: one observation (``(k, 84, 84)`` uint8 with ``frame_dedup``).
        frame_dedup: frame-deduplicated storage, filled with compact chunks.
        kind: ``prioritized`` or ``uniform``.
        actors, envs_per_actor, n_step, chunk_size, num_actions, gamma: shape of the traffic.
        mean_episode: mean episode length in agent steps (frame-dedup traffic).
        batch: sample / update_priorities batch size.
        seconds: sampling measurement window.
        seed: randomness.
    """

    capacity: int
    obs_shape: tuple[int, ...]
    obs_dtype: str
    frame_dedup: bool
    kind: str = "prioritized"
    actors: int = 2
    envs_per_actor: int = 4
    n_step: int = 3
    chunk_size: int = 64
    num_actions: int = 6
    gamma: float = 0.99
    mean_episode: int = 800
    batch: int = 512
    seconds: float = 3.0
    seed: int = 0


def _bare_copy_rate(spec: ReplaySpec, payload_bytes: float, seconds_cap: float) -> float:
    """Ceiling of insert: transitions/s of numpy slice-assigning the same bytes per transition
    (one frame, or obs + next_obs, plus action/reward/discount/priority) in chunks of
    ``chunk_size`` into fresh (untouched) rings of ``capacity`` slots, until the rings
    are full or ``seconds_cap`` passes. The rings are freed before returning."""
    n, t = spec.capacity, spec.chunk_size
    per = int(payload_bytes)
    ring = np.zeros((n, per), dtype=np.uint8)
    src = np.random.default_rng(spec.seed).integers(0, 256, size=(4096, per), dtype=np.uint8)
    done, t0 = 0, time.perf_counter()
    while done + t <= n:
        k = done % (4096 - t)
        ring[done:done + t] = src[k:k + t]
        done += t
        if (done // t) % 256 == 0 and time.perf_counter() - t0 > seconds_cap:
            break
    rate = done / (time.perf_counter() - t0)
    del ring
    gc.collect()
    return rate


def measure_replay(spec: ReplaySpec) -> dict[str, Any]:
    """Fill a replay as ``spec`` says and measure it (call it in a fresh process).

    Figures: RSS growth per transition after the fill (``bytes_per_transition``);
    transitions/s inside ``Replay.insert`` during the fill (``insert_tps``);
    ``sample(batch) + update_priorities(batch)`` calls/s on the full replay
    (``sample_update_per_s``). Ceilings: ``insert_ceiling_tps`` (bare slice copies of the
    same bytes into fresh rings, :func:`_bare_copy_rate`, measured first and freed) and
    ``sample_ceiling_per_s`` (numpy ``take`` of the same rows from the replay's own arrays at
    random indices: for frame dedup ``2 * k * batch`` frames, else ``batch`` obs and next_obs;
    no sum tree, no stack links, no torch, no priority update).

    Raises:
        RuntimeError: RSS cannot be read (not Linux).
    """
    rng = np.random.default_rng(spec.seed)
    shape, dtype = tuple(spec.obs_shape), np.dtype(spec.obs_dtype)
    gamma_n = spec.gamma ** spec.n_step
    if spec.frame_dedup:
        payload = FRAME_BYTES * (1 + 1 / max(spec.mean_episode, 1)) + 8 + 4 + 4 + 4
        pool = rng.integers(0, 256, size=(1024, *FRAME), dtype=np.uint8)
        sources: list[Any] = [
            SyntheticActor(i, spec.envs_per_actor, spec.n_step, spec.mean_episode, spec.chunk_size,
                           np.random.default_rng([spec.seed, i]), pool, spec.num_actions, gamma_n)
            for i in range(spec.actors)]
    else:
        payload = 2 * dtype.itemsize * int(np.prod(shape)) + 8 + 4 + 4 + 4
        sources = [_StackedSource(shape, dtype, spec.chunk_size, spec.num_actions, gamma_n, rng)]
    insert_ceiling = _bare_copy_rate(spec, payload, seconds_cap=max(spec.seconds, 5.0))
    cfg = ReplayConfig(kind=spec.kind, capacity=spec.capacity, min_replay_size=spec.batch, samples_per_insert=0.0,
                       initial_priority="actor", frame_dedup="on" if spec.frame_dedup else "off")
    gc.collect()
    rss0 = rss_bytes()
    replay = make_replay(cfg, spec.batch, transition_spec(shape, dtype, spec.frame_dedup), seed=spec.seed)
    t0 = time.perf_counter()
    chunks, t_insert, frames = fill(replay, sources, spec.capacity)
    fill_wall = time.perf_counter() - t0
    gc.collect()
    grow = rss_bytes() - rss0
    st = replay.storage

    td = rng.exponential(1.0, (64, spec.batch))
    for _ in range(3):  # warm-up
        b = replay.sample(spec.batch)
        replay.update_priorities(b.keys, td[0])
    calls, t0 = 0, time.perf_counter()
    while True:
        b = replay.sample(spec.batch)
        replay.update_priorities(b.keys, td[calls % 64])
        calls += 1
        if time.perf_counter() - t0 >= spec.seconds:
            break
    sample_rate = calls / (time.perf_counter() - t0)

    def bare_gather() -> None:
        if spec.frame_dedup:
            idx = rng.integers(0, min(st.frames_written, st.frame_capacity), size=2 * spec.obs_shape[0] * spec.batch)
            st.frames.take(idx, axis=0)
        else:
            idx = rng.integers(0, len(replay), size=spec.batch)
            st.obs.take(idx, axis=0)
            st.next_obs.take(idx, axis=0)
        st.action.take(idx[: spec.batch] % spec.capacity)

    gathers, t0 = 0, time.perf_counter()
    while True:
        bare_gather()
        gathers += 1
        if time.perf_counter() - t0 >= spec.seconds / 2:
            break
    gather_rate = gathers / (time.perf_counter() - t0)
    return {
        "capacity": spec.capacity, "frame_dedup": spec.frame_dedup, "kind": spec.kind,
        "obs_shape": list(shape), "obs_dtype": str(dtype), "batch": spec.batch,
        "inserted": int(replay.inserted), "alive": len(replay), "chunks": chunks,
        "frames_stored": int(frames), "rss_growth_bytes": int(grow),
        "bytes_per_transition": grow / spec.capacity,
        "insert_tps": replay.inserted / t_insert, "insert_s": t_insert, "fill_wall_s": fill_wall,
        "insert_ceiling_tps": insert_ceiling, "payload_bytes_per_transition": payload,
        "sample_update_per_s": sample_rate, "sample_ceiling_per_s": gather_rate,
        "frame_capacity": int(st.frame_capacity) if spec.frame_dedup else None,
    }
