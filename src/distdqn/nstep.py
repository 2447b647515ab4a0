"""n-step transition accumulator for a vector of environments.

For each sub-env it keeps the last (up to) n steps and emits
``(s_t, a_t, R_t = sum_{k<m} gamma^k r_{t+k}, gamma^m or 0, s_{t+m})`` with m = n, or
m < n when the episode ends inside the window (Sutton & Barto 2018, eq. 7.1; Hessel
et al. 2018, eq. 2). A *terminated* episode gives discount 0 (no bootstrap); a
*truncated* one keeps gamma^m and bootstraps from its final observation.

Works with both Gymnasium 1.x vector-env reset conventions:

- ``AutoresetMode.DISABLED`` (what distdqn's actors use): the caller resets finished
  sub-envs itself; every step is a real transition.
- ``AutoresetMode.NEXT_STEP`` (Gymnasium's default, envpool): the step *after* a
  terminated/truncated step ignores the action and returns the reset observation.
  Pass ``valid=~prev_done`` so that step is not taken as a transition;
  :meth:`NStepAccumulator.add` does this for you when ``autoreset_next_step=True``.

No emitted transition ever spans an episode boundary.

With ``track_ids=True`` each observation also carries an int64 id (the actor's frame id of
its newest frame, for frame-deduplicated replay); the ids travel with the observations and
:meth:`NStepAccumulator.pop` returns them as two extra columns.
"""

from __future__ import annotations

import numpy as np
import torch


class NStepAccumulator:
    """Vectorised n-step windows, one per sub-env (a ring over time, no per-step Python loop
    except over the sub-envs whose episode just ended).

    Args:
        num_envs: E, sub-envs in the vector env.
        n_step: n >= 1.
        gamma: discount in (0, 1].
        obs_shape, obs_dtype: per-env observation shape and dtype.
        autoreset_next_step: the vector env uses NEXT_STEP autoreset (see module doc).
        track_ids: also carry an int64 id per observation (``obs_id`` / ``next_obs_id`` of
            :meth:`add`); :meth:`pop` then returns 7 columns.
        track_q: also carry each step's acting value Q(s_t, a_t) (``q_sa`` of :meth:`add`);
            :meth:`pop` then returns it as the last column (float32), the value of each
            transition's first step (for Ape-X initial priorities without a second forward
            pass over ``obs``).
    """

    def __init__(
        self,
        num_envs: int,
        n_step: int,
        gamma: float,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype,
        autoreset_next_step: bool = False,
        track_ids: bool = False,
        track_q: bool = False,
    ):
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        self.num_envs, self.n, self.gamma = num_envs, n_step, gamma
        self.autoreset_next_step = autoreset_next_step
        self._obs = np.zeros((n_step, num_envs, *obs_shape), dtype=obs_dtype)
        self._act = np.zeros((n_step, num_envs), dtype=np.int64)
        self._rew = np.zeros((n_step, num_envs), dtype=np.float64)
        self._count = np.zeros(num_envs, dtype=np.int64)
        self._prev_done = np.zeros(num_envs, dtype=bool)
        self._t = 0
        self._gammas = gamma ** np.arange(n_step, dtype=np.float64)
        # _rot_gammas[f][slot] = gamma^((slot - f) mod n): discounts for a window starting at slot f.
        self._rot_gammas = np.stack([np.roll(self._gammas, f) for f in range(n_step)])
        self._full_disc = np.full(num_envs, gamma**n_step)
        self.track_ids = track_ids
        self._ids = np.zeros((n_step, num_envs), dtype=np.int64) if track_ids else None
        self._qsa = np.zeros((n_step, num_envs), dtype=np.float32) if track_q else None
        self._out: list[tuple[np.ndarray, ...]] = []
        self._pending = 0

    def __len__(self) -> int:
        """Transitions emitted and not yet popped."""
        return self._pending

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        valid: np.ndarray | None = None,
        obs_id: np.ndarray | None = None,
        next_obs_id: np.ndarray | None = None,
        q_sa: np.ndarray | None = None,
    ) -> None:
        """Record one vector step.

        Args:
            obs: ``[E, *obs_shape]`` observation the action was taken in.
            action: ``[E]`` int64.
            reward: ``[E]`` float.
            next_obs: ``[E, *obs_shape]`` observation returned by the step (the final
                observation when the episode ended).
            terminated, truncated: ``[E]`` bool.
            valid: ``[E]`` bool, False for steps that are not transitions (NEXT_STEP
                autoreset steps). Default: all valid (or derived when
                ``autoreset_next_step``).
            obs_id, next_obs_id: ``[E]`` int64 ids of ``obs`` / ``next_obs``; required
                with ``track_ids``, ignored otherwise.
            q_sa: ``[E]`` Q(obs, action) of the acting network; required with ``track_q``.
        """
        done = np.logical_or(terminated, truncated)
        n, t = self.n, self._t
        slot = t % n
        self._obs[slot] = obs
        self._act[slot] = action
        self._rew[slot] = reward
        qsa = self._qsa
        if qsa is not None:
            if q_sa is None:
                raise ValueError("NStepAccumulator(track_q=True).add needs q_sa")
            qsa[slot] = q_sa
        ids = self._ids
        if ids is not None:
            if obs_id is None or next_obs_id is None:
                raise ValueError("NStepAccumulator(track_ids=True).add needs obs_id and next_obs_id")
            ids[slot] = obs_id
            next_obs_id = np.asarray(next_obs_id, dtype=np.int64)
        if valid is None and not self.autoreset_next_step:
            # Fast path (every step is a transition): no masks to build.
            np.minimum(self._count + 1, n, out=self._count)
            self._prev_done = done
        else:
            if valid is None:
                valid = ~self._prev_done
            # Under NEXT_STEP autoreset the step after a done step is the reset step.
            self._prev_done = done & valid
            self._count = np.where(valid, np.minimum(self._count + 1, n), 0)
            done = done & valid
        full = ~done & (self._count == n)
        nfull = int(full.sum())
        if nfull:
            first = (t + 1) % n  # the oldest slot of a full window
            # R = sum_k gamma^k r_{first+k}: one product with the gammas rotated to `first`.
            ret = self._rot_gammas[first] @ (self._rew if nfull == self.num_envs else self._rew[:, full])
            if nfull == self.num_envs:
                self._emit(self._obs[first], self._act[first], ret, self._full_disc, next_obs,
                           None if ids is None else (ids[first], next_obs_id),
                           None if qsa is None else qsa[first])
            else:
                self._emit(self._obs[first, full], self._act[first, full], ret, self._full_disc[:nfull],
                           next_obs[full], None if ids is None else (ids[first, full], next_obs_id[full]),
                           None if qsa is None else qsa[first, full])
        for i in np.flatnonzero(done):
            length = int(self._count[i])
            slots = (t - length + 1 + np.arange(length)) % n
            rews = self._rew[slots, i]
            # Return of the window starting at j: sum_{k < length-j} gamma^k r_{j+k}.
            rets = np.array([(self._gammas[: length - j] * rews[j:]).sum() for j in range(length)])
            if terminated[i]:
                disc = np.zeros(length)
            else:
                disc = self.gamma ** np.arange(length, 0, -1, dtype=np.float64)
            self._emit(
                self._obs[slots, i],
                self._act[slots, i],
                rets,
                disc,
                np.repeat(next_obs[i][None], length, axis=0),
                None if ids is None else (ids[slots, i], np.full(length, next_obs_id[i], dtype=np.int64)),
                None if qsa is None else qsa[slots, i],
            )
            self._count[i] = 0
        self._t = t + 1

    def _emit(self, obs, act, ret, disc, next_obs, ids=None, qsa=None) -> None:
        cols = (obs.copy(), act.copy(), ret.astype(np.float32), disc.astype(np.float32), next_obs.copy())
        if ids is not None:
            cols += (np.array(ids[0], dtype=np.int64), np.array(ids[1], dtype=np.int64))
        if qsa is not None:
            cols += (np.array(qsa, dtype=np.float32),)
        self._out.append(cols)
        self._pending += len(act)

    def pop(self) -> tuple[np.ndarray, ...] | None:
        """All emitted transitions as ``(obs, action, reward, discount, next_obs)``
        arrays with leading dim T (plus ``obs_id, next_obs_id`` with ``track_ids``, then
        ``q_sa`` with ``track_q``), or None if there are none."""
        if not self._out:
            return None
        cols = tuple(np.concatenate(c, axis=0) for c in zip(*self._out))
        self._out.clear()
        self._pending = 0
        return cols  # type: ignore[return-value]

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Forget the open windows of the masked sub-envs (all when None); used when an env is recreated."""
        if mask is None:
            mask = np.ones(self.num_envs, dtype=bool)
        self._count[mask] = 0
        self._prev_done[mask] = False

    def state_dict(self) -> dict:
        """Open windows and emitted-but-unpopped transitions (torch tensors / ints only)."""
        out = self.pop()
        if out is not None:  # keep them pending after saving
            self._out.append(out)
            self._pending = len(out[1])
        state = {
            "obs": torch.from_numpy(self._obs.copy()),
            "act": torch.from_numpy(self._act.copy()),
            "rew": torch.from_numpy(self._rew.copy()),
            "count": torch.from_numpy(self._count.copy()),
            "prev_done": torch.from_numpy(self._prev_done.copy()),
            "t": self._t,
            "pending": [torch.from_numpy(np.ascontiguousarray(a)) for a in out] if out is not None else [],
        }
        if self._ids is not None:
            state["ids"] = torch.from_numpy(self._ids.copy())
        if self._qsa is not None:
            state["qsa"] = torch.from_numpy(self._qsa.copy())
        return state

    def load_state_dict(self, state: dict) -> None:
        self._obs[...] = state["obs"].numpy()
        self._act[...] = state["act"].numpy()
        self._rew[...] = state["rew"].numpy()
        self._count[...] = state["count"].numpy()
        self._prev_done[...] = state["prev_done"].numpy()
        self._t = int(state["t"])
        if self._ids is not None:
            self._ids[...] = state["ids"].numpy()
        if self._qsa is not None and "qsa" in state:
            self._qsa[...] = state["qsa"].numpy()
        self._out.clear()
        self._pending = 0
        if state["pending"]:
            cols = tuple(t.numpy().copy() for t in state["pending"])
            self._out.append(cols)
            self._pending = len(cols[1])
