"""R2D2's adder: fixed-length, overlapping sequences with the recurrent state at their start
(Kapturowski et al. 2019, sec. 3, "stored state" with "burn-in").

For each sub-env a sequence starts at the episode's start and every ``period`` steps after;
it holds ``T = burn_in + length`` steps and the observation after the last one (for the
n-step bootstrap), so ``obs`` and the LSTM's previous action and reward have ``T + 1`` rows.
A sequence never spans two episodes: at an episode end every sequence begun in it is
emitted, padded with zeros after the final observation and masked (``mask`` 0).

Item fields (:func:`sequence_spec`): ``obs [T+1, *obs_shape]``, ``prev_action [T+1]`` int64
(-1 where there is none: the episode's first step), ``prev_reward [T+1]`` float32,
``action [T]`` int64, ``reward [T]`` float32, ``terminated [T]`` float32 (1 at the step the
episode terminated; a truncated episode bootstraps from its final observation),
``mask [T]`` float32 (1 for real steps), ``h0``/``c0 [lstm_size]`` float32 (the state the
actor acted with before ``obs[0]``).

With frame deduplication (``replay.frame_dedup``, Atari's frame stacks) ``obs`` is declared
a sequence of frame stacks (``Field.stack_axis`` 1): the adder keeps the actor's frame ids,
not the stacks, and a chunk carries ``obs_frame [T+1]`` int64 (each stack's newest frame;
after an episode's end, the final observation's, which the mask hides) beside the frames
(:mod:`distdqn.agents.frames`). The replay then stores each frame once, however many
sequences overlap on it (:mod:`distdqn.replay.frame_storage`).
"""

from __future__ import annotations

import numpy as np
import torch

from distdqn.core import Field, ItemSpec


OBS_FRAME = "obs_frame"
"""A frame-deduplicated chunk's ``[S, T+1]`` int64 column of frame ids."""


def sequence_spec(obs_shape: tuple[int, ...], obs_dtype, steps: int, lstm_size: int,
                  frame_dedup: bool = False) -> ItemSpec:
    """The item spec of sequences of ``steps`` (T) steps; ``frame_dedup``: ``obs`` is a
    sequence of frame stacks (``obs_shape`` ``(k, H, W)``) whose frames the replay stores once."""
    shape, dt = tuple(int(d) for d in obs_shape), np.dtype(obs_dtype).name
    t = int(steps)
    obs = Field((t + 1, *shape), dt, OBS_FRAME, stack_axis=1) if frame_dedup else Field((t + 1, *shape), dt)
    return ItemSpec.of(obs=obs, prev_action=Field((t + 1,), "int64"),
                       prev_reward=Field((t + 1,), "float32"), action=Field((t,), "int64"),
                       reward=Field((t,), "float32"), terminated=Field((t,), "float32"),
                       mask=Field((t,), "float32"), h0=Field((lstm_size,), "float32"),
                       c0=Field((lstm_size,), "float32"))


class SequenceAdder:
    """Sequences of E sub-envs (module docstring).

    Args:
        num_envs: E.
        steps: T = burn-in + trained length.
        period: steps between the starts of consecutive sequences of an episode.
        spec: :func:`sequence_spec`.
    """

    def __init__(self, num_envs: int, steps: int, period: int, spec: ItemSpec):
        self.num_envs, self.steps, self.period, self.spec = int(num_envs), int(steps), int(period), spec
        self.frame_dedup = spec["obs"].frames is not None
        self._obs_key = "obs_id" if self.frame_dedup else "obs"
        self.reset()

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Forget the open sequences of the masked sub-envs (all when None); ready ones stay."""
        if mask is None:
            self._ready: list[dict[str, np.ndarray]] = []
            self._buf: list[list[dict]] = [[] for _ in range(self.num_envs)]
            self._base = [0] * self.num_envs  # the env's step index of _buf[i][0]
            self._t = [0] * self.num_envs  # the env's steps recorded in this episode
            self._next_start = [0] * self.num_envs
            return
        for i in np.flatnonzero(np.asarray(mask, dtype=bool)):
            self._buf[i], self._base[i], self._t[i], self._next_start[i] = [], 0, 0, 0

    @property
    def num_recorded(self) -> int:
        """Sequences ready to be popped."""
        return len(self._ready)

    def open_sequences(self) -> int:
        """Sequences begun and not yet emitted (what a reset throws away)."""
        return sum(max(0, -(-(t - ns) // self.period)) for t, ns in zip(self._t, self._next_start))

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray, truncated: np.ndarray, *, h: np.ndarray, c: np.ndarray,
            prev_action: np.ndarray, prev_reward: np.ndarray, obs_id: np.ndarray | None = None,
            next_obs_id: np.ndarray | None = None, **_: np.ndarray) -> None:
        """Record one vector step: ``obs``/``next_obs [E, *obs_shape]``, ``action [E]``,
        ``reward [E]``, ``terminated``/``truncated [E]`` bool, and from the acting pass the
        LSTM state ``h``/``c [E, lstm_size]`` and ``prev_action``/``prev_reward [E]`` it
        acted on in ``obs``. With frame deduplication, ``obs_id``/``next_obs_id [E]`` int64
        the actor frame ids of their newest frames are kept instead of the observations."""
        ended = np.logical_or(terminated, truncated)
        if self.frame_dedup:
            obs, next_obs = np.asarray(obs_id, dtype=np.int64), np.asarray(next_obs_id, dtype=np.int64)
        key = self._obs_key
        for i in range(self.num_envs):
            self._buf[i].append({key: obs[i], "action": int(action[i]), "reward": float(reward[i]),
                                 "terminated": bool(terminated[i]), "h": h[i], "c": c[i],
                                 "prev_action": int(prev_action[i]), "prev_reward": float(prev_reward[i])})
            self._t[i] += 1
            t = self._t[i]
            while self._next_start[i] + self.steps <= t:  # a whole sequence and the obs after it
                self._emit(i, self._next_start[i], next_obs[i])
                self._next_start[i] += self.period
            if ended[i]:
                while self._next_start[i] < t:
                    self._emit(i, self._next_start[i], next_obs[i])
                    self._next_start[i] += self.period
                self._buf[i], self._base[i], self._t[i], self._next_start[i] = [], 0, 0, 0
                continue
            drop = self._next_start[i] - self._base[i]
            if drop > 0:
                del self._buf[i][:drop]
                self._base[i] += drop

    def _emit(self, i: int, start: int, last_next_obs: np.ndarray) -> None:
        steps = self._buf[i][start - self._base[i] :][: self.steps]
        n = len(steps)
        s = {name: np.zeros(f.shape, f.np_dtype) for name, f in self.spec.fields if f.frames is None}
        obs = s["obs"] if not self.frame_dedup else np.zeros(self.steps + 1, np.int64)
        key = self._obs_key
        for j, st in enumerate(steps):
            obs[j] = st[key]
            s["prev_action"][j], s["prev_reward"][j] = st["prev_action"], st["prev_reward"]
            s["action"][j], s["reward"][j] = st["action"], st["reward"]
            s["terminated"][j], s["mask"][j] = float(st["terminated"]), 1.0
        # A sequence is emitted at the step that completes it or ends its episode, so the
        # observation after its last step is that step's next_obs.
        obs[n] = last_next_obs
        if self.frame_dedup:  # padding names a frame the sequence holds anyway
            obs[n + 1 :] = last_next_obs
            s[OBS_FRAME] = obs
        s["prev_action"][n], s["prev_reward"][n] = steps[-1]["action"], steps[-1]["reward"]
        s["prev_action"][n + 1 :] = -1
        s["h0"][...], s["c0"][...] = steps[0]["h"], steps[0]["c"]
        self._ready.append(s)

    def pop_items(self) -> tuple[dict[str, np.ndarray], None] | None:
        """The ready sequences as a chunk's arrays (leading dim: sequences); no initial
        priorities (the learner's first pass gives them)."""
        if not self._ready:
            return None
        ready, self._ready = self._ready, []
        return {name: np.stack([r[name] for r in ready]) for name in ready[0]}, None

    def state_dict(self) -> dict:
        """The ready sequences and each sub-env's recorded steps, as tensors (exact resume)."""
        ready = {name: torch.from_numpy(np.stack([r[name] for r in self._ready])) for name in self._ready[0]} \
            if self._ready else {}
        dtypes = dict(_STEP_DTYPES, obs_id=np.int64) if self.frame_dedup else dict(_STEP_DTYPES, obs=None)
        bufs = [{k: torch.from_numpy(np.stack([np.asarray(st[k], dtype=dt) for st in b]))
                 for k, dt in dtypes.items()} if b else {} for b in self._buf]
        return {"ready": ready, "num_ready": len(self._ready), "buf": bufs, "base": list(self._base),
                "t": list(self._t), "next_start": list(self._next_start)}

    def load_state_dict(self, state: dict) -> None:
        self.reset()
        if not state:
            return
        n = int(state["num_ready"])
        self._ready = [{k: v[i].numpy().copy() for k, v in state["ready"].items()} for i in range(n)]
        for i, b in enumerate(state["buf"]):
            if not b:
                continue
            cols = {k: v.numpy() for k, v in b.items()}
            cast = {"action": int, "reward": float, "terminated": bool, "prev_action": int, "prev_reward": float,
                    "obs_id": int}
            self._buf[i] = [{k: (cast[k](cols[k][j]) if k in cast else cols[k][j].copy()) for k in cols}
                            for j in range(len(cols["action"]))]
        self._base, self._t = [int(x) for x in state["base"]], [int(x) for x in state["t"]]
        self._next_start = [int(x) for x in state["next_start"]]


_STEP_DTYPES = {"action": np.int64, "reward": np.float64, "terminated": np.bool_, "h": np.float32,
                "c": np.float32, "prev_action": np.int64, "prev_reward": np.float64}
