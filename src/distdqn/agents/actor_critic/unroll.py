"""The actor-critic agent's items: unrolls of ``unroll_length`` (T) consecutive steps of one
sub-env, with the behaviour policy's log-probabilities (IMPALA, Espeholt et al. 2018, sec. 3).

Fields of one unroll (leading dim T):

- ``obs`` ``[T, *obs_shape]``, ``action`` ``[T]`` int64, ``reward`` ``[T]`` float32;
- ``discount`` ``[T]`` float32: gamma, or 0 where the episode *terminated* at that step;
- ``next_obs`` ``[T, *obs_shape]``: each step's next observation (a finished episode's
  final one, so that a *truncated* step bootstraps from it, as DQN's adder does);
- ``continues`` ``[T]`` float32: 0 where the step ended its episode (terminated or
  truncated), so V-trace carries no correction across it (unrolls cross episodes);
- ``behaviour_logp`` ``[T]`` float32: log mu(a_t | x_t) of the acting policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distdqn.core import Field, ItemSpec

FIELDS = ("obs", "action", "reward", "discount", "next_obs", "continues", "behaviour_logp")


def unroll_spec(obs_shape: tuple[int, ...], obs_dtype: np.dtype | type | str, unroll_length: int) -> ItemSpec:
    """The item spec of unrolls of ``unroll_length`` steps of ``obs_shape`` observations."""
    t, shape, dt = int(unroll_length), tuple(int(d) for d in obs_shape), np.dtype(obs_dtype).name
    return ItemSpec.of(obs=Field((t, *shape), dt), action=Field((t,), "int64"), reward=Field((t,), "float32"),
                       discount=Field((t,), "float32"), next_obs=Field((t, *shape), dt),
                       continues=Field((t,), "float32"), behaviour_logp=Field((t,), "float32"))


class UnrollAdder:
    """Cuts the stream of E sub-envs' steps into unrolls of T steps (module docstring).

    All E sub-envs step together, so after every T vector steps E unrolls are complete.

    Args:
        num_envs: E.
        unroll_length: T.
        gamma: the discount of a step that did not terminate.
        spec: the item spec (:func:`unroll_spec`).
    """

    def __init__(self, num_envs: int, unroll_length: int, gamma: float, spec: ItemSpec):
        self.num_envs, self.t, self.gamma, self.spec = int(num_envs), int(unroll_length), float(gamma), spec
        self._steps: list[dict[str, np.ndarray]] = []  # the open unrolls' steps, [E] arrays each
        self._done: list[dict[str, np.ndarray]] = []  # complete unrolls' fields, [E, T, ...] each

    @property
    def num_recorded(self) -> int:
        """Complete unrolls not yet popped."""
        return self.num_envs * len(self._done)

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray | None,
            terminated: np.ndarray, truncated: np.ndarray, behaviour_logp: np.ndarray | None = None,
            **extras: Any) -> None:
        """One vector step: ``[E]`` arrays (``obs``/``next_obs`` ``[E, *obs_shape]``)."""
        if behaviour_logp is None:
            raise ValueError("UnrollAdder.add needs behaviour_logp (the actor-critic policy's acting values)")
        term = np.asarray(terminated, dtype=bool)
        ended = np.logical_or(term, truncated)
        self._steps.append({
            "obs": np.array(obs, copy=True), "action": np.asarray(action, dtype=np.int64),
            "reward": np.asarray(reward, dtype=np.float32), "discount": np.where(term, 0.0, self.gamma).astype(np.float32),
            "next_obs": np.array(next_obs, copy=True), "continues": np.where(ended, 0.0, 1.0).astype(np.float32),
            "behaviour_logp": np.asarray(behaviour_logp, dtype=np.float32)})
        if len(self._steps) == self.t:
            self._done.append({k: np.stack([s[k] for s in self._steps], axis=1) for k in FIELDS})
            self._steps = []

    def pop_items(self) -> tuple[dict[str, np.ndarray], None] | None:
        """The complete unrolls ``[N, T, ...]`` (no priorities: FIFO replay), or None."""
        if not self._done:
            return None
        done, self._done = self._done, []
        return {k: np.concatenate([d[k] for d in done]) for k in FIELDS}, None

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Forget the open unrolls (of all sub-envs: they step in lockstep, so one sub-env's
        open unroll cannot be cut alone; an env restart costs at most T - 1 steps of each)."""
        self._steps = []

    def state_dict(self) -> dict:
        return {"steps": [dict(s) for s in self._steps], "done": [dict(d) for d in self._done]}

    def load_state_dict(self, state: dict) -> None:
        self._steps = [{k: np.asarray(v) for k, v in s.items()} for s in state["steps"]]
        self._done = [{k: np.asarray(v) for k, v in d.items()} for d in state["done"]]
