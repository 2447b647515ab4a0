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

The synthetic actors are :class:`distdqn.bench.SyntheticActor` (also behind rows
(e) and (f) of ``distdqn bench --env ALE/Pong-v5``).

Run: ``PYTHONPATH=src python benchmarks/replay_memory.py`` (needs ~8 GB of free memory;
``--transitions 100000`` for a quick look).
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from distdqn.agents.dqn.spec import transition_spec
from distdqn.bench import FRAME, FRAME_BYTES, SyntheticActor, fill, rss_bytes
from distdqn.config import ReplayConfig
from distdqn.replay import Replay, make_replay

STACK = 4
TARGET_BYTES = 1.1 * 1_000_000 * FRAME_BYTES  # 1.1 x 7.06 GB


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
    replay = make_replay(cfg, 32, transition_spec((STACK, *FRAME), np.uint8, cfg.frame_dedup == "on"), seed=0)
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
