"""Memory and speed of frame-deduplicated replay with 1,000,000 Atari transitions.

Fills a :class:`distdqn.replay.Replay` (``frame_dedup="on"``, prioritized by default) with
synthetic Atari experience sent the way actors send it (compact chunks: new 84x84 uint8
frames plus frame ids, :class:`distdqn.core.FrameBlock`): several actors with several
sub-envs each, episodes of random length, n-step transitions (n = 3), chunks of 64
transitions. Frames are random bytes (each frame distinct) so every stored page is really
written.

Reports the growth of the process's resident set (``VmRSS`` of ``/proc/self/status``)
from just before the replay is built until it holds ``--transitions`` transitions, as bytes
per transition and as a ratio to the target ``1.1 x 7.06 GB`` (one 84x84 frame, 7,056
bytes, per transition for 1,000,000 transitions: 7.056e9 bytes, times 1.1). Then it keeps
inserting until the frame ring has wrapped (steady state: every frame slot in use) and
reports again, and times ``insert`` and ``sample(32)`` / ``sample(512)``.

Only touched pages count in RSS: the replay's arrays are ``np.zeros`` (untouched pages
cost nothing), so the "full" figure is what is really in use, and the "wrapped" figure is
the most the replay will ever use.

Run: ``PYTHONPATH=src python benchmarks/replay_memory.py`` (needs ~8 GB of free memory;
``--transitions 100000`` for a quick look).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections import deque

import numpy as np

from distdqn.config import ReplayConfig
from distdqn.core import FrameBlock, TransitionChunk
from distdqn.replay import Replay

FRAME = (84, 84)
FRAME_BYTES = FRAME[0] * FRAME[1]  # 7,056
STACK = 4
TARGET_BYTES = 1.1 * 1_000_000 * FRAME_BYTES  # 1.1 x 7.06 GB


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class SyntheticActor:
    """An actor's frame numbering and n-step windows over ``envs`` sub-envs (see
    :class:`distdqn.roles.actor.Actor`), with random frames and episode lengths."""

    def __init__(self, actor_id: int, envs: int, n_step: int, mean_episode: int, chunk_size: int,
                 rng: np.random.Generator):
        self.actor_id, self.envs, self.n, self.chunk_size, self.rng = actor_id, envs, n_step, chunk_size, rng
        self.mean_episode = mean_episode
        self.stream = (actor_id << 32) | 12345
        self.next_id = 0
        self.frames: list[np.ndarray] = []
        self.prev: list[np.ndarray] = []
        self.start = 0
        self.obs: list[int] = []
        self.nxt: list[int] = []
        self.windows = [deque() for _ in range(envs)]
        self.cur = self._new_frames(envs, None)
        self.left = self._lengths(envs)

    def _lengths(self, m: int) -> np.ndarray:
        return self.rng.integers(max(1, self.mean_episode // 4), self.mean_episode * 7 // 4 + 1, size=m)

    def _new_frames(self, m: int, prev: np.ndarray | None) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + m, dtype=np.int64)
        self.frames.append(self.rng.integers(0, 256, size=(m, *FRAME), dtype=np.uint8))
        self.prev.append(ids if prev is None else prev.copy())
        self.next_id += m
        return ids

    def step(self) -> None:
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

    def chunk(self) -> TransitionChunk:
        while len(self.obs) < self.chunk_size:
            self.step()
        t = len(self.obs)
        frames, prev = np.concatenate(self.frames), np.concatenate(self.prev)
        c = TransitionChunk(
            obs=None, next_obs=None,
            action=self.rng.integers(0, 6, size=t),
            reward=self.rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), size=t),
            discount=np.full(t, 0.99**3, np.float32),
            priority=self.rng.exponential(1.0, size=t).astype(np.float32),
            actor_id=self.actor_id,
            frames=FrameBlock(frames=frames, prev=prev, start=self.start, stream=self.stream),
            obs_frame=np.array(self.obs, np.int64), next_frame=np.array(self.nxt, np.int64),
        )
        self.start = self.next_id
        self.frames, self.prev, self.obs, self.nxt = [], [], [], []
        return c


def fill(replay: Replay, actors: list[SyntheticActor], until: int) -> tuple[int, float, int]:
    """Insert chunks round-robin until ``replay.inserted >= until``; returns (chunks,
    seconds inside ``insert``, frames sent)."""
    chunks, t_insert, frames = 0, 0.0, 0
    i = 0
    while replay.inserted < until:
        c = actors[i % len(actors)].chunk()
        i += 1
        frames += len(c.frames)
        t0 = time.perf_counter()
        replay.insert(c)
        t_insert += time.perf_counter() - t0
        chunks += 1
    return chunks, t_insert, frames


def sample_rate(replay: Replay, batch: int, seconds: float, rng: np.random.Generator) -> float:
    """``sample(batch)`` + ``update_priorities`` calls per second."""
    for _ in range(3):
        replay.sample(batch)
    n, t0 = 0, time.perf_counter()
    while True:
        b = replay.sample(batch)
        replay.update_priorities(b.keys, rng.exponential(1.0, batch))
        n += 1
        if time.perf_counter() - t0 >= seconds:
            return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transitions", type=int, default=1_000_000, help="replay capacity and fill")
    p.add_argument("--kind", choices=["prioritized", "uniform"], default="prioritized")
    p.add_argument("--actors", type=int, default=8)
    p.add_argument("--envs", type=int, default=4, help="sub-envs (streams) per actor")
    p.add_argument("--mean-episode", type=int, default=400, help="mean episode length in agent steps")
    p.add_argument("--seconds", type=float, default=3.0, help="per sampling measurement")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    cap = args.transitions
    actors = [SyntheticActor(i, args.envs, 3, args.mean_episode, 64, np.random.default_rng([1, i]))
              for i in range(args.actors)]
    cfg = ReplayConfig(kind=args.kind, capacity=cap, min_replay_size=32, samples_per_insert=0.0,
                       initial_priority="actor", frame_dedup="on")
    gc.collect()
    rss0 = rss_bytes()
    replay = Replay(cfg, 32, (STACK, *FRAME), np.uint8, seed=0)
    st = replay.storage
    rss_built = rss_bytes()

    t0 = time.perf_counter()
    chunks, t_ins, frames = fill(replay, actors, cap)
    wall = time.perf_counter() - t0
    gc.collect()
    grow = rss_bytes() - rss0
    print(f"replay: {args.kind}, frame_dedup=on, capacity {cap:,} transitions, frame ring {st.frame_capacity:,} "
          f"frames; {args.actors} actors x {args.envs} envs, mean episode {args.mean_episode} steps, n=3, "
          f"chunks of 64")
    print(f"built (untouched arrays): RSS +{(rss_built - rss0) / 1e6:.1f} MB")
    print(f"full: {replay.inserted:,} transitions inserted ({len(replay):,} alive), {st.frames_written:,} frames "
          f"stored ({st.frames_written / replay.inserted:.4f} per transition)")
    print(f"  RSS growth {grow / 1e9:.3f} GB = {grow / cap:,.0f} bytes/transition "
          f"(one 84x84 frame = {FRAME_BYTES:,}; stacked obs+next_obs = {2 * STACK * FRAME_BYTES:,})")
    print(f"  ratio to 1.1 x 7.06 GB ({TARGET_BYTES / 1e9:.3f} GB): {grow / TARGET_BYTES * (1e6 / cap):.3f}"
          + ("" if cap == 1_000_000 else f" (target scaled to {cap:,} transitions)"))
    print(f"  insert: {replay.inserted / t_ins:,.0f} transitions/s, {chunks / t_ins:,.0f} chunks/s inside "
          f"Replay.insert ({t_ins:.1f} s of {wall:.1f} s; the rest is generating random frames)")

    # Steady state: keep inserting until every frame slot has been written.
    more = st.frame_capacity - st.frames_written
    fill(replay, actors, replay.inserted + int(max(more, 0) * 1.02) + cap // 20)
    gc.collect()
    grow2 = rss_bytes() - rss0
    print(f"wrapped: {replay.inserted:,} transitions inserted ({len(replay):,} alive of {cap:,}), "
          f"{st.frames_written:,} frames written (ring {st.frame_capacity:,})")
    print(f"  RSS growth {grow2 / 1e9:.3f} GB = {grow2 / cap:,.0f} bytes/transition; ratio to 1.1 x 7.06 GB: "
          f"{grow2 / TARGET_BYTES * (1e6 / cap):.3f}")

    for b in (32, 512):
        r = sample_rate(replay, b, args.seconds, rng)
        print(f"sample({b}) + update_priorities({b}): {r:,.0f} batches/s = {r * b:,.0f} transitions/s")


if __name__ == "__main__":
    main()
