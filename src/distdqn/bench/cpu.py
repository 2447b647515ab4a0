"""CPU time of a measured run: this process and every process below it, sampled in a
thread (psutil), so that a row can say how many of the machine's cores a collector kept
busy in its steady state and what one env step costs in CPU time. On a machine whose
cores are all busy, env steps/s cannot pass cores / (CPU seconds per env step)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import psutil

TICK_S = 0.25


class CpuMeter:
    """Samples ``(time.time(), CPU seconds of the process tree)`` every ``tick`` seconds
    while entered, and maps a run's ``metrics.csv`` ``wall_time`` onto ``time.time()``: each
    row seen gives the file's modification time minus the row's ``wall_time`` (the row is
    the file's last write), and the offset is their median, however late the sampling
    thread saw the rows.

    Args:
        metrics_csv: the run's ``metrics.csv`` (it may not exist yet).
        tick: seconds between samples.
    """

    def __init__(self, metrics_csv: Path, tick: float = TICK_S):
        self.metrics_csv, self.tick = Path(metrics_csv), float(tick)
        self.samples: list[tuple[float, float]] = []
        self._seen: dict[tuple[int, float], float] = {}
        self._offsets: list[float] = []
        self._size = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._me = psutil.Process()

    def __enter__(self) -> CpuMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _cpu(self) -> float:
        """CPU seconds of every process of the tree seen so far: a process that has ended
        keeps its last reading, so the total never falls when one exits."""
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                with p.oneshot():
                    key, t = (p.pid, p.create_time()), p.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # gone between the listing and the read: its last reading stands
            self._seen[key] = t.user + t.system
        return sum(self._seen.values())

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            self.record(time.time())
            self._see_rows()

    def record(self, now: float) -> None:
        """One sample: the tree's CPU seconds at ``now`` (``time.time()`` seconds)."""
        self.samples.append((now, self._cpu()))

    def note_row(self, modified: float, wall_time: float) -> None:
        """A ``metrics.csv`` row of ``wall_time`` seen as the file's last write, made at
        ``modified`` (``time.time()`` seconds)."""
        self._offsets.append(modified - wall_time)

    def _see_rows(self) -> None:
        try:
            st = os.stat(self.metrics_csv)
        except OSError:
            return
        if st.st_size == self._size:
            return
        self._size = st.st_size
        try:
            lines = self.metrics_csv.read_text().splitlines()
        except OSError:
            return
        if len(lines) < 2:
            return
        column = lines[0].split(",").index("wall_time") if "wall_time" in lines[0] else None
        try:
            wall = float(lines[-1].split(",")[column]) if column is not None else None
        except (ValueError, IndexError):  # a row being written
            return
        if wall is not None:
            self.note_row(st.st_mtime, wall)

    def cores(self, start_s: float, end_s: float) -> float | None:
        """Mean cores busy between two ``wall_time`` instants of the run (None when the
        run's rows were never seen or less than half the window was sampled)."""
        if not self._offsets or len(self.samples) < 2:
            return None
        offset = float(np.median(self._offsets))
        t = np.array([s[0] for s in self.samples])
        cpu = np.array([s[1] for s in self.samples])
        # A run's last steady row comes moments before its processes exit, so the window is
        # cut to the span sampled (a steady window's rate holds in any part of it).
        a, b = max(start_s + offset, t[0]), min(end_s + offset, t[-1])
        if b - a < max(2 * self.tick, 0.5 * (end_s - start_s)):
            return None
        return float((np.interp(b, t, cpu) - np.interp(a, t, cpu)) / (b - a))
