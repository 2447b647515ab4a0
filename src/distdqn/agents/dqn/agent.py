"""The DQN agent: double DQN (van Hasselt et al. 2016) with n-step returns (Hessel et al.
2018), an optional dueling head (Wang et al. 2016), prioritized replay (Schaul et al. 2016)
with Ape-X initial priorities from the acting values (Horgan et al. 2018).

Its acting function is :class:`EpsilonGreedy` (with the epsilon schedules, here); its
adder the :class:`~distdqn.agents.dqn.nstep.NStepAdder`; its loss
:func:`~distdqn.agents.dqn.loss.dqn_loss`."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from distdqn.agents.dqn.loss import dqn_loss
from distdqn.agents.dqn.networks import make_network, network_kind
from distdqn.agents.dqn.nstep import NStepAdder
from distdqn.agents.dqn.spec import transition_spec
from distdqn.agents.inference import trace_for_inference
from distdqn.config import ActorConfig, ExperimentConfig
from distdqn.core import ItemSpec
from distdqn.envs import EnvSpaces


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


def linear_epsilon(step: float, start: float, end: float, decay_steps: int) -> float:
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
        return self.choose(q, env_steps)

    def choose(self, q: np.ndarray, env_steps: int) -> np.ndarray:
        """Epsilon-greedy actions ``[E]`` int64 from Q-values ``q`` ``[E, A]`` computed
        elsewhere (one batched pass for many actors: SEED RL's central inference)."""
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


class DQNAgent:
    """DQN's networks, acting function, adder, item spec and loss for one experiment.

    Args:
        cfg: the experiment (``network``, ``actor``, ``learner`` sections are read).
        spaces: the env's spaces.
    """

    name = "dqn"
    has_target = True

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces):
        self.cfg, self.spaces = cfg, spaces

    def make_network(self) -> nn.Module:
        return make_network(self.cfg.network, self.spaces.obs_shape, self.spaces.num_actions)

    def network_kind(self) -> str:
        return network_kind(self.cfg.network, self.spaces.obs_shape)[0]

    def item_spec(self, frame_dedup: bool) -> ItemSpec:
        return transition_spec(self.spaces.obs_shape, self.spaces.obs_dtype, frame_dedup)

    def make_policy(self, network: nn.Module, example_obs: np.ndarray, *, actor_id: int, num_actors: int,
                    rng: np.random.Generator, compute_values: bool) -> EpsilonGreedy:
        """Epsilon-greedy over ``network`` (acting through a TorchScript trace of it with
        ``actor.trace_network``; the trace shares its parameters)."""
        a = self.cfg.actor
        policy = trace_for_inference(network, torch.from_numpy(example_obs)) if a.trace_network else network
        return EpsilonGreedy(a, policy, num_envs=example_obs.shape[0], num_actions=self.spaces.num_actions,
                             actor_id=actor_id, num_actors=num_actors, rng=rng, compute_values=compute_values)

    def make_adder(self, num_envs: int, frame_dedup: bool, compute_priorities: bool) -> NStepAdder:
        return NStepAdder(num_envs, self.cfg.actor.n_step, self.cfg.learner.gamma, self.item_spec(frame_dedup),
                          compute_priorities)

    def chunk_trigger(self, chunk_size: int, num_envs: int) -> int:
        """Items recorded before a chunk is cut: the adder's count bounds the complete
        transitions from above by at most E x n, so a chunk holds at least ``chunk_size``."""
        return chunk_size + num_envs * self.cfg.actor.n_step

    def loss(self):
        lr = self.cfg.learner
        return functools.partial(dqn_loss, double_dqn=lr.double_dqn, kind=lr.loss)

    @staticmethod
    def greedy(outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=1)


def initial_priorities(network: nn.Module, obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
                       discount: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """``[T]`` float32 |R + gamma^n max_a Q(s', a) - Q(s, a)| of whole transitions with
    ``network``, in two forward passes (Ape-X, Horgan et al. 2018, sec. 3). Actors take the
    same values from their acting passes (:mod:`distdqn.agents.dqn.nstep`, ``track_q``);
    this is the reference computation."""
    t = len(action)
    with torch.inference_mode():
        q = network(torch.from_numpy(np.concatenate([obs, next_obs], axis=0))).numpy()
    next_max = q[t:].max(axis=1)
    q_taken = q[np.arange(t), action]
    return np.abs(reward + discount * next_max - q_taken).astype(np.float32)
