"""The CPU meter of the bench rows: the window it reads and the readings of ended processes."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from distdqn.bench.cpu import CpuMeter


def _burn(ready, done) -> None:
    x = 0
    for i in range(3_000_000):  # some CPU time of its own, whatever the machine's speed
        x += i
    ready.set()
    done.wait(30)


def test_cores_are_read_in_the_run_window_mapped_by_the_rows(tmp_path: Path) -> None:
    meter = CpuMeter(tmp_path / "metrics.csv")
    # CPU seconds: 0.5 cores until t = 1010 (start-up), then 2 cores; the run's wall_time 0 is t = 1000
    cpu = {}
    for i in range(41):
        t = 1000.0 + 0.5 * i
        cpu[t] = 0.5 * min(t - 1000.0, 10.0) + 2.0 * max(t - 1010.0, 0.0)
    meter._cpu = lambda: cpu[now]  # type: ignore[method-assign]
    for now in sorted(cpu):
        meter.record(now)
    assert meter.cores(11.0, 19.0) is None  # no row seen: the window cannot be placed
    for wall in (10.5, 11.0, 11.5):
        meter.note_row(1000.0 + wall + 0.001, wall)  # each row written a millisecond after its wall_time
    assert meter.cores(11.0, 19.0) == pytest.approx(2.0, rel=1e-3)
    assert meter.cores(2.0, 8.0) == pytest.approx(0.5, rel=1e-3)
    # a window running past the last sample (t = 1020) is cut to it, while half of it is sampled
    assert meter.cores(12.0, 24.0) == pytest.approx(2.0, rel=1e-3)
    assert meter.cores(16.0, 40.0) is None


def test_an_ended_process_keeps_its_cpu_seconds(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    meter = CpuMeter(tmp_path / "metrics.csv")
    before = meter._cpu()
    child = ctx.Process(target=_burn, args=(ready, done))
    child.start()
    try:
        assert ready.wait(60)
        alive = meter._cpu()
    finally:
        done.set()
        child.join(30)
    ended = meter._cpu()
    assert alive > before  # the child's start-up and loop are counted
    assert ended >= alive  # and stay counted once it has exited
