"""DQN's acting function: epsilon-greedy over the Q-network's values, with the values the
n-step adder needs for Ape-X initial priorities; and the epsilon schedules."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from distdqn.config import ActorConfig


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


class EpsilonGreedy:
    """Epsilon-greedy actions for E sub-envs from one batched forward pass of a Q-network.

    Exploration (``actor.epsilon_schedule``): ``apex``, fixed per-env epsilons
    :func:`apex_epsilons` over all ``num_actors * E`` sub-envs (this actor's slice); or
    ``linear``, :func:`linear_epsilon` of the global env steps, estimated as this actor's
    own env steps times the number of actors.

    Args:
        cfg: actor config (schedule).
        policy: the Q-network (or its trace) ``[E, *obs_shape] -> [E, A]``, called under
            ``torch.inference_mode``.
        num_envs: E.
        num_actions: A.
        actor_id, num_actors: this actor's place among all actors (Ape-X slice).
        rng: the actor's generator (one uniform draw per env per step).
        compute_values: keep what :meth:`acting_values` and :meth:`final_values` need.
    """

    def __init__(self, cfg: ActorConfig, policy: Callable[[torch.Tensor], torch.Tensor] | nn.Module, num_envs: int,
                 num_actions: int, actor_id: int, num_actors: int, rng: np.random.Generator,
                 compute_values: bool):
        self.cfg, self.policy, self.num_envs, self.num_actions = cfg, policy, num_envs, num_actions
        self.num_actors, self.rng, self.compute_values = num_actors, rng, compute_values
        self._env_index = np.arange(num_envs)
        if cfg.epsilon_schedule == "apex":
            eps = apex_epsilons(num_actors * num_envs, cfg.apex_epsilon, cfg.apex_alpha)
            self._apex_eps: np.ndarray | None = eps[actor_id * num_envs : (actor_id + 1) * num_envs]
        else:
            self._apex_eps = None
        self._eps_value, self._eps = float("nan"), np.zeros(num_envs)
        self._eps_final = False  # the linear decay is over: epsilon stays at epsilon_end
        self._q: np.ndarray | None = None

    def reset_schedule(self) -> None:
        """Forget the cached epsilon (after the actor's step count was restored)."""
        self._eps_value, self._eps_final = float("nan"), False

    def epsilons(self, env_steps: int) -> np.ndarray:
        """``[E]`` current epsilon of each sub-env, given this actor's ``env_steps``."""
        if self._apex_eps is not None:
            return self._apex_eps
        if self._eps_final:
            return self._eps
        c = self.cfg
        steps = env_steps * self.num_actors
        eps = linear_epsilon(steps, c.epsilon_start, c.epsilon_end, c.epsilon_decay_steps)
        if eps != self._eps_value:  # constant once the decay is over: keep the array
            self._eps_value, self._eps = eps, np.full(self.num_envs, eps)
        self._eps_final = steps >= c.epsilon_decay_steps
        return self._eps

    def epsilon(self, env_steps: int) -> float:
        """The epsilon this actor uses at ``env_steps`` (mean over its sub-envs)."""
        return float(np.mean(self.epsilons(env_steps)))

    def act(self, obs: np.ndarray, env_steps: int) -> np.ndarray:
        """Epsilon-greedy actions ``[E]`` int64 for ``obs`` ``[E, *obs_shape]``."""
        with torch.inference_mode():
            q = self.policy(torch.from_numpy(obs)).numpy()
        greedy = q.argmax(axis=1)
        self._q = q
        # One uniform draw per env decides both: explore if u < eps, and then u / eps is
        # itself uniform on [0, 1), which picks the random action.
        eps = self.epsilons(env_steps)
        u = self.rng.random(self.num_envs)
        explore = u < eps
        if not explore.any():
            return greedy.astype(np.int64, copy=False)
        random_actions = np.minimum((u / np.maximum(eps, 1e-12) * self.num_actions).astype(np.int64),
                                    self.num_actions - 1)
        return np.where(explore, random_actions, greedy).astype(np.int64)

    def acting_values(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """For the initial priorities, from the forward pass that chose ``actions``: ``q_sa``
        ``[E]`` float32 Q(obs, action) and ``v_obs`` ``[E]`` max_a Q(obs, a); empty when
        values are not computed."""
        if not self.compute_values or self._q is None:
            return {}
        q = self._q
        return {"q_sa": q[self._env_index, actions], "v_obs": q.max(axis=1)}

    def final_values(self, next_obs: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> dict:
        """``v_final``: max_a Q of the final observations of truncated (not terminated)
        episodes, the only bootstrap values no acting pass will compute; one forward pass
        over just those, and only when there are any."""
        if not self.compute_values:
            return {}
        cut = np.logical_and(truncated, np.logical_not(terminated))
        if not cut.any():
            return {}
        v = np.zeros(self.num_envs, dtype=np.float32)
        with torch.inference_mode():
            v[cut] = self.policy(torch.from_numpy(np.ascontiguousarray(next_obs[cut]))).max(dim=1).values.numpy()
        return {"v_final": v}
