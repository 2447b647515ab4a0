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

With ``track_q=True`` (Ape-X initial priorities, Horgan et al. 2018, sec. 3) each transition
also carries the acting value Q(s_t, a_t) of its first step and the bootstrap value
V(s_{t+m}) = max_a Q(s_{t+m}, a) of its last observation, both from the actor's acting
forward passes: a transition whose episode goes on is held back ("staged") until the next
:meth:`NStepAccumulator.add` brings the values of the observation it ends in, so no extra
forward pass is needed except over the final observations of truncated episodes.
"""

from __future__ import annotations

import numpy as np
import torch


class NStepAccumulator:
    """Vectorised n-step windows, one per sub-env (a ring over time, no per-step Python loop
    except over the sub-envs whose episode just ended). Emitted transitions are written into
    preallocated column buffers that :meth:`pop` empties.

    Args:
        num_envs: E, sub-envs in the vector env.
        n_step: n >= 1.
        gamma: discount in (0, 1].
        obs_shape, obs_dtype: per-env observation shape and dtype.
        autoreset_next_step: the vector env uses NEXT_STEP autoreset (see module doc).
        track_ids: also carry an int64 id per observation (``obs_id`` / ``next_obs_id`` of
            :meth:`add`); :meth:`pop` then returns them after the first 5 columns.
        track_q: also carry Q(s_t, a_t) of each transition's first step and V(s') of its
            bootstrap observation (``q_sa``, ``v_obs``, ``v_final`` of :meth:`add`); :meth:`pop`
            then returns them as the last two columns (float32). See the module doc.
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
        self.obs_shape, self.obs_dtype = tuple(obs_shape), np.dtype(obs_dtype)
        self._obs = np.zeros((n_step, num_envs, *obs_shape), dtype=obs_dtype)
        self._act = np.zeros((n_step, num_envs), dtype=np.int64)
        self._rew = np.zeros((n_step, num_envs), dtype=np.float64)
        self._count = np.zeros(num_envs, dtype=np.int64)
        self._prev_done = np.zeros(num_envs, dtype=bool)
        self._t = 0
        self._gammas = gamma ** np.arange(n_step, dtype=np.float64)
        # _rot_gammas[f][slot] = gamma^((slot - f) mod n): discounts for a window starting at slot f.
        self._rot_gammas = np.stack([np.roll(self._gammas, f) for f in range(n_step)])
        # _tri[j, m] = gamma^(m - j) for m >= j: returns of the windows of an ended episode.
        k = np.arange(n_step)
        self._tri = np.where(k[None, :] >= k[:, None], gamma ** (k[None, :] - k[:, None]).clip(0), 0.0)
        self._tail_disc = [gamma ** np.arange(m, 0, -1, dtype=np.float64) for m in range(n_step + 1)]
        self._full_disc = np.full(num_envs, gamma**n_step)
        self._env_index = np.arange(num_envs)
        self.track_ids, self.track_q = track_ids, track_q
        self._ids = np.zeros((n_step, num_envs), dtype=np.int64) if track_ids else None
        self._qsa = np.zeros((n_step, num_envs), dtype=np.float32) if track_q else None
        # Output columns: obs, action, return, discount, next_obs[, obs_id, next_obs_id][, q_sa, next_v].
        self._specs: list[tuple[tuple[int, ...], np.dtype]] = [
            (self.obs_shape, self.obs_dtype), ((), np.dtype(np.int64)), ((), np.dtype(np.float32)),
            ((), np.dtype(np.float32)), (self.obs_shape, self.obs_dtype)]
        if track_ids:
            self._specs += [((), np.dtype(np.int64))] * 2
        if track_q:
            self._specs += [((), np.dtype(np.float32))] * 2
        self._cols = self._alloc(max(64, 4 * num_envs * n_step))
        self._rows = 0  # rows written; the last len(_staged_env) of them await their next_v
        self._staged_env = np.zeros(0, dtype=np.int64)

    def _alloc(self, capacity: int) -> list[np.ndarray]:
        return [np.zeros((capacity, *shape), dtype=dtype) for shape, dtype in self._specs]

    def __len__(self) -> int:
        """Transitions emitted, complete and not yet popped."""
        return self._rows - len(self._staged_env)

    @property
    def num_staged(self) -> int:
        """Transitions emitted but waiting for their bootstrap value (``track_q``)."""
        return len(self._staged_env)

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
        v_obs: np.ndarray | None = None,
        v_final: np.ndarray | None = None,
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
            v_obs: ``[E]`` max_a Q(obs, a) from the same forward pass; required with
                ``track_q`` (it completes the transitions staged by the previous call).
            v_final: ``[E]`` max_a Q(next_obs, a), read only where the step was truncated
                and not terminated; required with ``track_q`` when there is such a sub-env.

        Raises:
            ValueError: a value that ``track_ids`` / ``track_q`` need is missing.
        """
        done = np.logical_or(terminated, truncated)
        n, t = self.n, self._t
        slot = t % n
        qsa = self._qsa
        if qsa is not None:
            if q_sa is None or v_obs is None:
                raise ValueError("NStepAccumulator(track_q=True).add needs q_sa and v_obs")
            self.resolve(v_obs)
            qsa[slot] = q_sa
        self._obs[slot] = obs
        self._act[slot] = action
        self._rew[slot] = reward
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
        any_done = bool(done.any())
        # Ended episodes first: their transitions are complete now (staged rows stay last).
        if any_done:
            self._emit_ended(done, terminated, next_obs, next_obs_id, v_final)
        full = (self._count == n) if not any_done else (~done & (self._count == n))
        first = (t + 1) % n  # the oldest slot of a full window
        if full.all():
            # R = sum_k gamma^k r_{first+k}: one product with the gammas rotated to `first`.
            ret = self._rot_gammas[first] @ self._rew
            self._emit([self._obs[first], self._act[first], ret, self._full_disc, next_obs]
                       + ([] if ids is None else [ids[first], next_obs_id])
                       + ([] if qsa is None else [qsa[first], None]), self._env_index)
        elif full.any():
            ret = self._rot_gammas[first] @ self._rew[:, full]
            self._emit([self._obs[first, full], self._act[first, full], ret, self._full_disc[: len(ret)],
                        next_obs[full]]
                       + ([] if ids is None else [ids[first, full], next_obs_id[full]])
                       + ([] if qsa is None else [qsa[first, full], None]), np.flatnonzero(full))
        self._t = t + 1

    def _emit_ended(self, done, terminated, next_obs, next_obs_id, v_final) -> None:
        """Emit every window of each sub-env whose episode ended at this step."""
        n, t = self.n, self._t
        if self._qsa is not None and v_final is None and bool((done & ~np.asarray(terminated)).any()):
            raise ValueError("NStepAccumulator(track_q=True).add needs v_final for a truncated episode")
        for i in np.flatnonzero(done):
            length = int(self._count[i])
            slots = (t - length + 1 + np.arange(length)) % n
            rets = self._tri[:length, :length] @ self._rew[slots, i]
            term = bool(terminated[i])
            disc = np.zeros(length) if term else self._tail_disc[length]
            cols = [self._obs[slots, i], self._act[slots, i], rets, disc, next_obs[i]]
            if self._ids is not None:
                cols += [self._ids[slots, i], next_obs_id[i]]
            if self._qsa is not None:
                cols += [self._qsa[slots, i], 0.0 if term else float(v_final[i])]
            self._emit(cols, None)
            self._count[i] = 0

    def _emit(self, cols: list, staged_env: np.ndarray | None) -> None:
        """Append rows (``cols`` in column order; scalars and single observations broadcast;
        a None next_v with ``staged_env``, the sub-env of each row, stages them)."""
        m = len(cols[1])
        end = self._rows + m
        if end > len(self._cols[0]):
            grown = self._alloc(max(2 * len(self._cols[0]), end))
            for g, c in zip(grown, self._cols):
                g[: self._rows] = c[: self._rows]
            self._cols = grown
        r0 = self._rows
        for buf, col in zip(self._cols, cols):
            if col is not None:
                buf[r0:end] = col
        self._rows = end
        if staged_env is not None and self._qsa is not None:
            self._staged_env = staged_env

    def resolve(self, v_obs: np.ndarray) -> None:
        """Complete the staged transitions with ``v_obs`` (``[E]`` max_a Q of the sub-envs'
        current observations, which are the staged transitions' next observations)."""
        k = len(self._staged_env)
        if k:
            self._cols[-1][self._rows - k : self._rows] = np.asarray(v_obs)[self._staged_env]
            self._staged_env = self._staged_env[:0]

    def pop(self) -> tuple[np.ndarray, ...] | None:
        """All complete emitted transitions as ``(obs, action, reward, discount, next_obs)``
        arrays with leading dim T (plus ``obs_id, next_obs_id`` with ``track_ids``, then
        ``q_sa, next_v`` with ``track_q``), or None if there are none. Staged transitions
        (``track_q``) stay for the next call."""
        k = len(self)
        if k == 0:
            return None
        out = tuple(c[:k].copy() for c in self._cols)
        staged = self._rows - k
        for c in self._cols:
            c[:staged] = c[k : self._rows]
        self._rows = staged
        return out

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Forget the open windows of the masked sub-envs (all when None), and their staged
        transitions (their next observations will never be acted on); used when an env is
        recreated."""
        if mask is None:
            mask = np.ones(self.num_envs, dtype=bool)
        self._count[mask] = 0
        self._prev_done[mask] = False
        k = len(self._staged_env)
        if k:
            drop = np.asarray(mask)[self._staged_env]
            if drop.any():
                keep = np.concatenate([np.ones(self._rows - k, dtype=bool), ~drop])
                for c in self._cols:
                    c[: int(keep.sum())] = c[: self._rows][keep]
                self._rows = int(keep.sum())
                self._staged_env = self._staged_env[~drop]

    def state_dict(self) -> dict:
        """Open windows and emitted-but-unpopped transitions, staged ones included (torch
        tensors / ints only)."""
        state = {
            "obs": torch.from_numpy(self._obs.copy()),
            "act": torch.from_numpy(self._act.copy()),
            "rew": torch.from_numpy(self._rew.copy()),
            "count": torch.from_numpy(self._count.copy()),
            "prev_done": torch.from_numpy(self._prev_done.copy()),
            "t": self._t,
            "pending": [torch.from_numpy(c[: self._rows].copy()) for c in self._cols] if self._rows else [],
            "staged_env": torch.from_numpy(self._staged_env.copy()),
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
        self._rows = 0
        self._staged_env = np.zeros(0, dtype=np.int64)
        pending = [t.numpy() for t in state["pending"]]
        if pending:
            if len(pending) == len(self._specs) - 1 and self._qsa is not None:
                # Written before next_v was tracked: bootstrap values unknown, taken as 0.
                pending.append(np.zeros(len(pending[1]), dtype=np.float32))
            self._emit(pending, None)
        if "staged_env" in state:
            self._staged_env = state["staged_env"].numpy().astype(np.int64).copy()
