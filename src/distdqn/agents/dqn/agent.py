"""The DQN agent: double DQN (van Hasselt et al. 2016) with n-step returns (Hessel et al.
2018), an optional dueling head (Wang et al. 2016), prioritized replay (Schaul et al. 2016)
with Ape-X initial priorities from the acting values (Horgan et al. 2018)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from distdqn.agents.dqn.acting import EpsilonGreedy
from distdqn.agents.dqn.adder import NStepAdder
from distdqn.agents.dqn.loss import dqn_loss
from distdqn.agents.dqn.networks import make_network, network_kind
from distdqn.agents.inference import trace_for_inference
from distdqn.agents.dqn.spec import transition_spec
from distdqn.config import ExperimentConfig
from distdqn.core import ItemSpec
from distdqn.envs import EnvSpaces


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
