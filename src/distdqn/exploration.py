"""Exploration schedules (epsilon-greedy)."""

from __future__ import annotations

import numpy as np


def apex_epsilons(num: int, base: float = 0.4, alpha: float = 7.0) -> np.ndarray:
    """Ape-X per-actor exploration eps_i = base^(1 + alpha * i / (N - 1)), i = 0..N-1
    (Horgan et al. 2018, "Distributed Prioritized Experience Replay", sec. 4.1).

    Returns ``[N]`` float64. For N = 1 the single actor gets ``base``.
    """
    if num < 1:
        raise ValueError(f"need at least one actor, got {num}")
    if num == 1:
        return np.array([base])
    i = np.arange(num, dtype=np.float64)
    return base ** (1.0 + alpha * i / (num - 1))


def linear_epsilon(step: int | float, start: float, end: float, decay_steps: int) -> float:
    """Linear decay from ``start`` to ``end`` over ``decay_steps`` env steps, then constant
    (Mnih et al. 2015, "Methods: Training details")."""
    frac = min(1.0, max(0.0, step / decay_steps))
    return start + frac * (end - start)
