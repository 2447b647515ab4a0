"""DQN's adder: n-step transitions (with Ape-X initial priorities) from an actor's stream of
vector steps, on top of the lazy :class:`~distdqn.agents.dqn.nstep.NStepAccumulator`."""

from __future__ import annotations

import numpy as np

from distdqn.agents.dqn.nstep import NStepAccumulator
from distdqn.agents.dqn.spec import NEXT_FRAME, OBS_FRAME
from distdqn.core import ItemSpec


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
