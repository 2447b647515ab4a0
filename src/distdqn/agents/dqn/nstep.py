"""DQN's adder: n-step transitions (with Ape-X initial priorities) from an actor's stream of
vector steps (:class:`NStepAdder`), on the lazy :class:`NStepAccumulator`.

For each sub-env it emits ``(s_t, a_t, R_t = sum_{k<m} gamma^k r_{t+k}, gamma^m or 0, s_{t+m})``
with m = n, or m < n when the episode ends inside the window (Sutton & Barto 2018, eq. 7.1;
Hessel et al. 2018, eq. 2). A *terminated* episode gives discount 0 (no bootstrap); a
*truncated* one keeps gamma^m and bootstraps from its final observation.

Works with both Gymnasium 1.x vector-env reset conventions:

- ``AutoresetMode.DISABLED`` (what distdqn's actors use): the caller resets finished
  sub-envs itself; every step is a real transition.
- ``AutoresetMode.NEXT_STEP`` (Gymnasium's default, envpool): the step *after* a
  terminated/truncated step ignores the action and returns the reset observation.
  Pass ``valid=~prev_done`` so that step is not taken as a transition;
  :meth:`NStepAccumulator.add` does this for you when ``autoreset_next_step=True``.

No emitted transition ever spans an episode boundary.

The accumulator is *lazy*: :meth:`NStepAccumulator.add` only records the step (a few row
copies into step buffers), and the windows are resolved for all sub-envs and all recorded
steps at once, with array operations, when transitions are asked for (:meth:`pop`,
``len``). An actor steps many times per chunk, so recording is what it pays per step.

With ``track_ids=True`` each observation also carries an int64 id (the actor's frame id of
its newest frame, for frame-deduplicated replay); the ids travel with the observations and
:meth:`NStepAccumulator.pop` returns them as two extra columns.

With ``track_q=True`` (Ape-X initial priorities, Horgan et al. 2018, sec. 3) each transition
also carries the acting value Q(s_t, a_t) of its first step and the bootstrap value
V(s_{t+m}) = max_a Q(s_{t+m}, a) of its last observation, both from the actor's acting
forward passes: ``v_obs`` of the step that acts in s_{t+m}, so a transition whose episode
goes on is complete ("staged" until then) only once the *next* step is recorded; no extra
forward pass is needed except over the final observations of truncated episodes
(``v_final``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from distdqn.agents.dqn.spec import NEXT_FRAME, OBS_FRAME
from distdqn.core import ItemSpec

log = logging.getLogger(__name__)

_STATE_FORMAT = 2
"""state_dict layout: recorded steps (lazy windows)."""


class NStepAccumulator:
    """Lazy n-step windows over a vector of sub-envs.

    Per :meth:`add` it copies the step into step buffers (``[steps, E, ...]``); transitions
    are resolved in bulk when asked for. Per sub-env, the transitions that are complete are
    always a prefix (in time) of those not yet popped: a window is complete once its n steps
    and bootstrap value are recorded, or once its episode ended inside it.

    Emission order (:meth:`pop`): by the step at which a transition became complete, then
    windows cut by an episode end before full ones, then sub-env, then start step.

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
        keep_obs: store the observations; False (frame-deduplicated actors, which send frame
            ids instead) skips their copies and :meth:`pop` returns None for ``obs`` and
            ``next_obs`` (``obs`` / ``next_obs`` of :meth:`add` may then be None).

    Raises:
        ValueError: ``n_step < 1``.
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
        keep_obs: bool = True,
    ):
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        self.num_envs, self.n, self.gamma = num_envs, n_step, gamma
        self.autoreset_next_step = autoreset_next_step
        self.obs_shape, self.obs_dtype = tuple(obs_shape), np.dtype(obs_dtype)
        self.track_ids, self.track_q, self.keep_obs = track_ids, track_q, keep_obs
        self._gammas = gamma ** np.arange(n_step + 1, dtype=np.float64)
        self._env_index = np.arange(num_envs)
        # Output columns: obs, action, return, discount, next_obs[, obs_id, next_obs_id][, q_sa, next_v].
        self._specs: list[tuple[tuple[int, ...], np.dtype]] = [
            (self.obs_shape, self.obs_dtype), ((), np.dtype(np.int64)), ((), np.dtype(np.float32)),
            ((), np.dtype(np.float32)), (self.obs_shape, self.obs_dtype)]
        if track_ids:
            self._specs += [((), np.dtype(np.int64))] * 2
        if track_q:
            self._specs += [((), np.dtype(np.float32))] * 2
        self._alloc(max(32, 2 * (n_step + 2)))
        self._base = 0  # absolute step number of row 0 of the step buffers
        self._t = 0  # absolute step number of the next add
        self._start = np.zeros(num_envs, dtype=np.int64)  # per sub-env: first start step not popped
        self._prev_done = np.zeros(num_envs, dtype=bool)
        self._recorded = 0  # valid sub-env steps recorded and not yet popped
        self._carry: list[np.ndarray] | None = None  # complete rows set aside (reset, resolve)

    def _alloc(self, cap: int) -> None:
        e, shape = self.num_envs, self.obs_shape
        self._obs = np.zeros((cap, e, *shape), dtype=self.obs_dtype) if self.keep_obs else None
        self._next = np.zeros((cap, e, *shape), dtype=self.obs_dtype) if self.keep_obs else None
        self._act = np.zeros((cap, e), dtype=np.int64)
        self._rew = np.zeros((cap, e), dtype=np.float64)
        self._term = np.zeros((cap, e), dtype=bool)
        self._done = np.zeros((cap, e), dtype=bool)  # terminated or truncated, on valid steps only
        self._valid = np.zeros((cap, e), dtype=bool)
        self._ids = np.zeros((cap, e), dtype=np.int64) if self.track_ids else None
        self._next_ids = np.zeros((cap, e), dtype=np.int64) if self.track_ids else None
        self._qsa = np.zeros((cap, e), dtype=np.float32) if self.track_q else None
        self._vobs = np.zeros((cap, e), dtype=np.float32) if self.track_q else None
        self._vfin = np.zeros((cap, e), dtype=np.float32) if self.track_q else None

    def _buffers(self) -> list[np.ndarray]:
        return [b for b in (self._obs, self._next, self._act, self._rew, self._term, self._done, self._valid,
                            self._ids, self._next_ids, self._qsa, self._vobs, self._vfin) if b is not None]

    def _first_row(self) -> int:
        """Buffer row of the oldest start not yet popped (rows before it are not needed)."""
        first = int(self._start.min()) if self.num_envs else self._t
        return min(max(first - self._base, 0), self._t - self._base)

    def _active(self, lo: int, hi: int) -> np.ndarray:
        """``[hi - lo, E]`` bool: rows that start a transition not yet popped."""
        steps = np.arange(lo, hi) + self._base
        return self._valid[lo:hi] & (steps[:, None] >= self._start[None, :])

    def _carried(self) -> int:
        return 0 if self._carry is None else len(self._carry[1])

    def _make_room(self) -> None:
        """Drop the rows before the oldest start still needed; grow when that frees too little."""
        keep_from = self._first_row()
        used = self._t - self._base - keep_from
        cap = len(self._act)
        if used + 1 > cap // 2:  # grow: at most a few windows' worth is ever kept
            old = self._buffers()
            self._alloc(2 * cap)
            for new, o in zip(self._buffers(), old):
                new[:used] = o[keep_from : keep_from + used]
        elif keep_from:
            for b in self._buffers():
                b[:used] = b[keep_from : keep_from + used]
        self._base += keep_from

    # ------------------------------------------------------------------ recording

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
                ``track_q`` (it completes the windows of the previous step that go on).
            v_final: ``[E]`` max_a Q(next_obs, a), read only where the step was truncated
                and not terminated; required with ``track_q`` when there is such a sub-env.

        Raises:
            ValueError: a value that ``track_ids`` / ``track_q`` need is missing.
        """
        done = np.logical_or(terminated, truncated)
        if valid is None and not self.autoreset_next_step:
            all_valid = True
        else:
            if valid is None:
                valid = ~self._prev_done
            valid = np.asarray(valid, dtype=bool)
            done = done & valid
            self._prev_done = done
            all_valid = False
        if self.track_q:
            if q_sa is None or v_obs is None:
                raise ValueError("NStepAccumulator(track_q=True).add needs q_sa and v_obs")
            if v_final is None and done.any() and (done & ~np.asarray(terminated, dtype=bool)).any():
                raise ValueError("NStepAccumulator(track_q=True).add needs v_final for a truncated episode")
        if self.track_ids and (obs_id is None or next_obs_id is None):
            raise ValueError("NStepAccumulator(track_ids=True).add needs obs_id and next_obs_id")
        i = self._t - self._base
        if i >= len(self._act):
            self._make_room()
            i = self._t - self._base
        if self._obs is not None:
            self._obs[i] = obs
            self._next[i] = next_obs
        self._act[i] = action
        self._rew[i] = reward
        self._term[i] = terminated
        self._done[i] = done
        if all_valid:
            self._valid[i] = True
            self._recorded += self.num_envs
        else:
            self._valid[i] = valid
            self._recorded += int(np.count_nonzero(valid))
        if self._ids is not None:
            self._ids[i] = obs_id
            self._next_ids[i] = next_obs_id
        if self._qsa is not None:
            self._qsa[i] = q_sa
            self._vobs[i] = v_obs
            if v_final is not None:
                self._vfin[i] = v_final
        self._t += 1

    # ------------------------------------------------------------------ resolving windows

    def _scan(self, v_through: int) -> dict | None:
        """The complete, not yet popped transitions, in emission order (changes nothing).

        ``v_through``: the last absolute step whose ``v_obs`` is known (track_q). Returns
        None when nothing is recorded, else a dict: ``count`` and, per transition, ``row``
        (its start row in the step buffers), ``env``, ``m`` (steps in the window) and
        ``ended`` (the window ends with its episode); ``incomplete`` ``[K, E]`` bool marks
        the starts still open, from buffer row ``lo``.
        """
        lo, hi = self._first_row(), self._t - self._base
        k = hi - lo
        if k <= 0:
            return None
        n = self.n
        active = self._active(lo, hi)
        done = self._done[lo:hi]
        alive = np.ones((k, self.num_envs), dtype=bool)
        m = np.zeros((k, self.num_envs), dtype=np.int64)  # steps to the episode end (0: none within n)
        for j in range(min(n, k)):
            d = done[j:] & alive[: k - j]
            m[: k - j][d] = j + 1
            alive[: k - j] &= ~done[j:]
        ended = m > 0
        # A window that goes on from row r needs rows r..r+n-1, and with track_q the v_obs of
        # row r+n: the first `n_full` rows qualify.
        n_full = k - n + 1
        if self.track_q:
            n_full = min(n_full, v_through - self._base + 1 - lo - n)
        full_ok = np.arange(k) < n_full
        complete = active & (ended | full_ok[:, None])
        incomplete = active & ~complete
        r_idx, e_idx = np.nonzero(complete)
        if len(r_idx) == 0:
            return {"incomplete": incomplete, "lo": lo, "count": 0}
        ended_sel = ended[r_idx, e_idx]
        m_sel = np.where(ended_sel, m[r_idx, e_idx], n)
        emit_step = r_idx + m_sel - 1  # the window's last step
        order = np.lexsort((r_idx, e_idx, ~ended_sel, emit_step))
        return {"row": r_idx[order] + lo, "env": e_idx[order], "m": m_sel[order], "ended": ended_sel[order],
                "incomplete": incomplete, "lo": lo, "count": len(order)}

    def _take(self, v_through: int) -> list[np.ndarray] | None:
        """Gather the complete transitions as output columns and mark them popped."""
        s = self._scan(v_through)
        if s is None:
            return None
        inc, lo = s["incomplete"], s["lo"]
        any_inc = inc.any(axis=0)
        first_inc = np.argmax(inc, axis=0) + lo + self._base
        self._start = np.where(any_inc, first_inc, self._t).astype(np.int64)
        if s["count"] == 0:
            return None
        self._recorded -= s["count"]
        row, env, m, ended = s["row"], s["env"], s["m"], s["ended"]
        last = row + m - 1  # row of the window's last step
        ret = np.zeros(len(row), dtype=np.float64)
        for j in range(self.n):
            inside = m > j
            if not inside.any():
                break
            ret[inside] += self._gammas[j] * self._rew[row[inside] + j, env[inside]]
        term = ended & self._term[last, env]
        disc = np.where(term, 0.0, self._gammas[m])
        keep = self._obs is not None
        cols = [self._obs[row, env] if keep else None, self._act[row, env], ret, disc,
                self._next[last, env] if keep else None]
        if self._ids is not None:
            cols += [self._ids[row, env], self._next_ids[last, env]]
        if self._qsa is not None:
            # Bootstrap value: 0 after termination, v_final after truncation, else the v_obs
            # of the step that acts in the window's next observation.
            nxt = np.minimum(last + 1, len(self._vobs) - 1)
            v = np.where(ended, self._vfin[last, env], self._vobs[nxt, env])
            cols += [self._qsa[row, env], np.where(term, 0.0, v)]
        return [None if c is None else np.asarray(c, dtype=dt).reshape(len(row), *shape)
                for c, (shape, dt) in zip(cols, self._specs)]

    def _set_aside(self, cols: list[np.ndarray] | None) -> None:
        if cols is None:
            return
        if self._carry is None:
            self._carry = cols
        else:
            self._carry = _concat(self._carry, cols)

    def _complete(self, v_through: int) -> int:
        s = self._scan(v_through)
        return 0 if s is None else s["count"]

    def __len__(self) -> int:
        """Transitions complete and not yet popped (resolves the windows: not per step)."""
        return self._carried() + self._complete(self._t - 1)

    @property
    def num_recorded(self) -> int:
        """Sub-env steps recorded whose transitions are not yet popped: an O(1) bound,
        ``len(self) <= num_recorded <= len(self) + E * n``."""
        return self._recorded + self._carried()

    @property
    def num_staged(self) -> int:
        """Transitions whose n steps are recorded but whose bootstrap value is not yet
        (``track_q``: the next :meth:`add`'s ``v_obs``, or :meth:`resolve`)."""
        if not self.track_q:
            return 0
        return self._complete(self._t) - self._complete(self._t - 1)  # as if the next v_obs were known

    def resolve(self, v_obs: np.ndarray) -> None:
        """Complete the staged transitions with ``v_obs`` (``[E]`` max_a Q of the sub-envs'
        current observations, which are the staged transitions' next observations); they are
        set aside for the next :meth:`pop`."""
        if not self.track_q:
            return
        i = self._t - self._base
        if i >= len(self._act):
            self._make_room()
            i = self._t - self._base
        self._vobs[i] = v_obs
        self._set_aside(self._take(self._t))

    def pop(self) -> tuple[np.ndarray, ...] | None:
        """All complete transitions as ``(obs, action, reward, discount, next_obs)`` arrays
        with leading dim T (plus ``obs_id, next_obs_id`` with ``track_ids``, then ``q_sa,
        next_v`` with ``track_q``), or None if there are none. Staged transitions
        (``track_q``) stay for a later call."""
        cols = self._take(self._t - 1)
        if self._carry is not None:
            carry, self._carry = self._carry, None
            cols = carry if cols is None else _concat(carry, cols)
        return None if cols is None else tuple(cols)

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Forget the open windows of the masked sub-envs (all when None), and their staged
        transitions (their next observations will never be acted on); used when an env is
        recreated. Complete transitions are kept for the next :meth:`pop`."""
        if mask is None:
            mask = np.ones(self.num_envs, dtype=bool)
        self._set_aside(self._take(self._t - 1))
        mask = np.asarray(mask, dtype=bool)
        self._prev_done[mask] = False
        open_starts = self._active(self._first_row(), self._t - self._base).sum(axis=0)
        self._recorded -= int(open_starts[mask].sum())
        self._start[mask] = self._t

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        """Recorded steps from the oldest unpopped start on, and transitions set aside
        (torch tensors / ints only)."""
        lo, hi = self._first_row(), self._t - self._base
        state = {
            "format": _STATE_FORMAT,
            "t": self._t,
            "base": self._base + lo,
            "start": torch.from_numpy(self._start.copy()),
            "prev_done": torch.from_numpy(self._prev_done.copy()),
            "recorded": self._recorded,
            "steps": [torch.from_numpy(b[lo:hi].copy()) for b in self._buffers()],
            "carry": [torch.from_numpy(c.copy()) for c in self._carry if c is not None] if self._carry is not None else [],
        }
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: a state of another layout.
        """
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"n-step state has format {state.get('format')!r}, expected {_STATE_FORMAT}")
        self._carry = None
        self._prev_done[...] = state["prev_done"].numpy()
        self._t = int(state["t"])
        self._start = state["start"].numpy().astype(np.int64).copy()
        self._recorded = int(state["recorded"])
        steps = [t.numpy() for t in state["steps"]]
        used = steps[0].shape[0]
        cap = len(self._act)
        while cap < used + 1:
            cap *= 2
        self._alloc(cap)
        for b, s in zip(self._buffers(), steps):
            b[:used] = s
        self._base = int(state["base"])
        carry = [t.numpy().copy() for t in state["carry"]]
        if carry and not self.keep_obs:
            carry = [None, *carry[:3], None, *carry[3:]]
        self._carry = carry if carry else None


def _concat(a: list, b: list) -> list:
    """Column-wise concatenation of two column lists (None columns stay None)."""
    return [None if x is None else np.concatenate([x, y]) for x, y in zip(a, b)]


class NStepAdder(NStepAccumulator):
    """n-step transitions of E sub-envs, popped as the named arrays of a chunk.

    Args:
        num_envs: E.
        n_step, gamma: the n-step return.
        spec: the item spec (:func:`~distdqn.agents.dqn.spec.transition_spec`); frame-stack
            ``obs`` (``Field.frames`` set) makes the adder keep frame ids, not observations.
        compute_priorities: also keep the acting values for initial priorities
            |R + gamma^m V(s') - Q(s, a)| (Ape-X, Horgan et al. 2018, sec. 3).
    """

    def __init__(self, num_envs: int, n_step: int, gamma: float, spec: ItemSpec, compute_priorities: bool):
        obs = spec["obs"]
        self.spec, self.frame_dedup = spec, obs.frames is not None
        super().__init__(num_envs, n_step, gamma, obs.shape, obs.np_dtype, track_ids=self.frame_dedup,
                         track_q=compute_priorities, keep_obs=not self.frame_dedup)

    def pop_items(self) -> tuple[dict[str, np.ndarray], np.ndarray | None] | None:
        """The complete transitions as ``(data, priority)``: ``data`` the chunk's arrays
        (``obs_frame`` / ``next_frame`` instead of ``obs`` / ``next_obs`` with frame ids),
        ``priority`` ``[T]`` float32 or None; None when there are none."""
        cols = self.pop()
        if cols is None:
            return None
        obs, action, reward, discount, next_obs = cols[:5]
        priority = None
        if self.track_q:
            q_sa, next_v = cols[-2], cols[-1]
            priority = np.abs(reward + discount * next_v - q_sa).astype(np.float32)
        if self.frame_dedup:
            data = {"action": action, "reward": reward, "discount": discount, OBS_FRAME: cols[5], NEXT_FRAME: cols[6]}
        else:
            data = {"obs": obs, "action": action, "reward": reward, "discount": discount, "next_obs": next_obs}
        return data, priority
