"""Parameters in shared memory: one flat float32 vector and its version, under a sequence
lock. The learner side writes; actor (and gorila learner) processes read."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


class SharedParams:
    """A flat float32 parameter vector in shared memory with a version, under a sequence lock.

    The writer makes the sequence odd, writes, stores the version, makes it even again.
    A reader retries if it saw an odd sequence or the sequence changed during its copy, so
    it never returns a torn vector. One writer (the learner), many readers (actors).
    """

    def __init__(self, ctx: Any, num_params: int):
        self.num_params = int(num_params)
        self._buf = ctx.RawArray("f", num_params)
        self._seq = ctx.RawValue("q", 0)
        self._version = ctx.RawValue("q", -1)

    def _view(self) -> np.ndarray:
        return np.frombuffer(self._buf, dtype=np.float32)

    def write(self, version: int, flat: np.ndarray) -> None:
        self._seq.value += 1
        self._view()[...] = flat
        self._version.value = version
        self._seq.value += 1

    def version(self) -> int:
        return int(self._version.value)

    def read(self, newer_than: int = -1) -> tuple[int, np.ndarray] | None:
        """``(version, copy)`` if the published version is newer than ``newer_than``, else None."""
        view = self._view()
        while True:
            s1 = self._seq.value
            if s1 % 2:
                time.sleep(0)
                continue
            v = int(self._version.value)
            if v <= newer_than:
                return None
            out = view.copy()
            if self._seq.value == s1:
                return v, out
