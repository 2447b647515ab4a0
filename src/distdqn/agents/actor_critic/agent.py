"""The actor-critic agent (IMPALA, Espeholt et al. 2018): policy logits and a state value
from one shared torso; acting samples from the policy and records its log-probability;
unrolls of ``actor_critic.unroll_length`` steps; the V-trace loss.

The network is the DQN torso of the same config (MLP, Nature CNN or small CNN,
:func:`~distdqn.agents.dqn.networks.make_network`, without the dueling head) whose output
layer gives A + 1 numbers: the A policy logits and the value (two linear heads on the
torso, kept as one layer). Evaluation is greedy: the argmax of the logits.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
from torch import nn

from distdqn.agents.actor_critic.loss import impala_loss, split_outputs
from distdqn.agents.actor_critic.unroll import UnrollAdder, unroll_spec
from distdqn.agents.dqn.networks import make_network, network_kind
from distdqn.agents.inference import trace_for_inference
from distdqn.config import ConfigError, ExperimentConfig
from distdqn.core import ItemSpec
from distdqn.envs import EnvSpaces


class SoftmaxPolicy:
    """Actions sampled from softmax(logits) for E sub-envs, from one batched forward pass.

    Sampling is the Gumbel-max trick on the actor's numpy generator (argmax of logits plus
    Gumbel noise draws exactly from the softmax), so a seeded actor is reproducible.

    Args:
        policy: the network (or its trace) ``[E, *obs_shape] -> [E, A + 1]``.
        num_envs: E.
        rng: the actor's generator.
    """

    def __init__(self, policy, num_envs: int, rng: np.random.Generator):
        self.policy, self.num_envs, self.rng = policy, num_envs, rng
        self._index = np.arange(num_envs)
        self._log_probs: np.ndarray | None = None

    def act(self, obs: np.ndarray, env_steps: int) -> np.ndarray:
        """``[E]`` int64 actions sampled from the policy at ``obs`` ``[E, *obs_shape]``."""
        with torch.inference_mode():
            logits, _ = split_outputs(self.policy(torch.from_numpy(obs)))
            log_probs = torch.log_softmax(logits.float(), dim=-1).numpy()
        self._log_probs = log_probs
        gumbel = -np.log(-np.log(self.rng.random(log_probs.shape)))
        return (log_probs + gumbel).argmax(axis=1).astype(np.int64)

    def acting_values(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """``behaviour_logp`` ``[E]`` float32: log mu(a | x) of the chosen actions."""
        return {"behaviour_logp": self._log_probs[self._index, actions].astype(np.float32)}

    def final_values(self, next_obs: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> dict:
        return {}  # unrolls keep each step's next observation: the learner bootstraps from it

    def epsilon(self, env_steps: int) -> float:
        return 0.0  # exploration comes from the stochastic policy itself


class ActorCriticAgent:
    """The actor-critic agent for one experiment (module docstring).

    Raises:
        ConfigError: ``network.dueling`` is on (the policy and value heads are the agent's own).
    """

    name = "actor_critic"
    has_target = False
    metric_columns = ("impala_loss", "pg_loss", "value_loss", "policy_entropy", "vtrace_rho_mean")
    """Columns of ``metrics.csv`` beyond the common ones."""

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces):
        if cfg.network.dueling:
            raise ConfigError("network.dueling", cfg.network.dueling, "null or false with agent actor_critic")
        self.cfg, self.spaces = cfg, spaces

    def make_network(self) -> nn.Module:
        net_cfg = dataclasses.replace(self.cfg.network, dueling=False)
        return make_network(net_cfg, self.spaces.obs_shape, self.spaces.num_actions + 1)

    def network_kind(self) -> str:
        return network_kind(self.cfg.network, self.spaces.obs_shape)[0]

    def item_spec(self, frame_dedup: bool) -> ItemSpec:
        if frame_dedup:
            raise ConfigError("replay.frame_dedup", "on", "off or auto with agent actor_critic (unrolls keep "
                              "whole observations)")
        return unroll_spec(self.spaces.obs_shape, self.spaces.obs_dtype, self.cfg.actor_critic.unroll_length)

    def make_policy(self, network: nn.Module, example_obs: np.ndarray, *, actor_id: int, num_actors: int,
                    rng: np.random.Generator, compute_values: bool) -> SoftmaxPolicy:
        policy = trace_for_inference(network, torch.from_numpy(example_obs)) if self.cfg.actor.trace_network \
            else network
        return SoftmaxPolicy(policy, example_obs.shape[0], rng)

    def make_adder(self, num_envs: int, frame_dedup: bool, compute_priorities: bool) -> UnrollAdder:
        return UnrollAdder(num_envs, self.cfg.actor_critic.unroll_length, self.cfg.learner.gamma,
                           self.item_spec(frame_dedup))

    def chunk_trigger(self, chunk_size: int, num_envs: int) -> int:
        """Complete unrolls that make a chunk: ``actor.chunk_size`` (all complete at once)."""
        return chunk_size

    def loss(self):
        ac = self.cfg.actor_critic
        return functools.partial(impala_loss, rho_bar=ac.rho_bar, c_bar=ac.c_bar, rho_bar_pg=ac.rho_bar_pg,
                                 value_coef=ac.value_coef, entropy_coef=ac.entropy_coef)

    @staticmethod
    def greedy(outputs: torch.Tensor) -> torch.Tensor:
        return split_outputs(outputs)[0].argmax(dim=1)
