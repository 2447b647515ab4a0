"""Throughput of prioritized replay: sample(512) + update_priorities(512) per second.

Replay of 1,000,000 CartPole-shaped transitions (obs [4] float32), filled, with random
priorities. Run: ``PYTHONPATH=src python benchmarks/replay_bench.py``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from distdqn.config import ReplayConfig
from distdqn.agents.dqn.spec import transition_chunk, transition_spec
from distdqn.replay import make_replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--capacity", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    cfg = ReplayConfig(kind="prioritized", capacity=args.capacity, min_replay_size=args.batch,
                       samples_per_insert=0.0, initial_priority="actor")
    replay = make_replay(cfg, args.batch, transition_spec((4,), np.float32), seed=0)
    rng = np.random.default_rng(1)
    chunk_len = 100_000
    t0 = time.perf_counter()
    for start in range(0, args.capacity, chunk_len):
        t = min(chunk_len, args.capacity - start)
        replay.insert(transition_chunk(
            obs=rng.standard_normal((t, 4), dtype=np.float32),
            action=rng.integers(0, 2, t),
            reward=np.ones(t, np.float32),
            discount=np.full(t, 0.99, np.float32),
            next_obs=rng.standard_normal((t, 4), dtype=np.float32),
            priority=rng.exponential(1.0, t).astype(np.float32),
        ))
    fill_s = time.perf_counter() - t0

    for _ in range(50):  # warm-up
        b = replay.sample(args.batch)
        replay.update_priorities(b.keys, rng.exponential(1.0, args.batch))
    td = rng.exponential(1.0, (1000, args.batch))
    iters = 0
    t0 = time.perf_counter()
    while True:
        b = replay.sample(args.batch)
        replay.update_priorities(b.keys, td[iters % 1000])
        iters += 1
        if iters % 100 == 0 and time.perf_counter() - t0 >= args.seconds:
            break
    dt = time.perf_counter() - t0
    print(f"fill {args.capacity} transitions: {fill_s:.2f} s")
    print(f"sample({args.batch}) + update_priorities({args.batch}): {iters / dt:.0f} /s "
          f"({1e6 * dt / iters:.0f} us each, capacity {args.capacity})")


if __name__ == "__main__":
    main()
