"""The Evaluator role: greedy (or low-epsilon) episodes on its own environments."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from distdqn.config import EnvConfig
from distdqn.core import load_flat_params
from distdqn.envs import make_vector_env
from distdqn.agents.inference import trace_for_inference


class Evaluator:
    """Runs whole episodes with a fixed policy and reports their real (unclipped) returns.

    Episodes run in parallel in a vector env of ``min(episodes, max_parallel)`` copies;
    each evaluation ``k`` is seeded from ``(seed, k)`` so results are reproducible.

    Args:
        env_cfg: environment (the same preprocessing as training).
        network: a Q-network used for acting (parameters loaded per call).
        seed: root of the evaluation seeds.
        epsilon: exploration during evaluation.
        trace: act through a TorchScript trace of ``network`` (see
            :func:`distdqn.agents.inference.trace_for_inference`; the same values).
    """

    def __init__(self, env_cfg: EnvConfig, network: nn.Module, seed: int, epsilon: float = 0.0, max_parallel: int = 20,
                 trace: bool = True):
        # Whole games: a lost life ends a training episode (episodic_life), never an evaluation.
        self.env_cfg = dataclasses.replace(env_cfg, episodic_life=False)
        self.net, self.seed, self.epsilon = network, seed, epsilon
        self.net.eval()
        self.max_parallel = max_parallel
        self.evaluations = 0
        self._envs = None
        self._trace = trace
        self._policy: Callable[[torch.Tensor], torch.Tensor] | None = None  # traced on first use

    def evaluate(self, params: np.ndarray, episodes: int) -> np.ndarray:
        """Returns ``[episodes]`` float64 episode returns of the policy given by ``params``."""
        load_flat_params(self.net, params)
        n = min(episodes, self.max_parallel)
        if self._envs is None or self._envs.num_envs != n:
            if self._envs is not None:
                self._envs.close()
            self._envs = make_vector_env(self.env_cfg, n)
        envs = self._envs
        rng = np.random.default_rng([self.seed, 99, self.evaluations])
        self.evaluations += 1
        num_actions = int(envs.single_action_space.n)
        seeds = [int(s) for s in rng.integers(2**31 - 1, size=n)]
        obs, _ = envs.reset(seed=seeds)
        if self._policy is None:
            self._policy = trace_for_inference(self.net, torch.from_numpy(np.asarray(obs))) if self._trace else self.net
        policy = self._policy
        started = n
        active = np.ones(n, dtype=bool)
        returns: list[float] = []
        while active.any():
            with torch.inference_mode():
                greedy = policy(torch.from_numpy(np.asarray(obs))).argmax(dim=1).numpy()
            explore = rng.random(n) < self.epsilon
            actions = np.where(explore, rng.integers(num_actions, size=n), greedy)
            obs, _, term, trunc, info = envs.step(actions)
            done = np.logical_or(term, trunc)
            if done.any():
                ep = info["episode"]
                for i in np.flatnonzero(done & active):
                    returns.append(float(ep["r"][i]))
                    if started < episodes:
                        started += 1
                    else:
                        active[i] = False
                # Finished sub-envs are always reset (inactive ones keep running, ignored).
                new_seeds = [int(rng.integers(2**31 - 1)) if d else None for d in done]
                reset_obs, _ = envs.reset(seed=new_seeds, options={"reset_mask": done})
                obs = np.where(done.reshape(-1, *([1] * (np.ndim(obs) - 1))), reset_obs, obs)
        return np.array(returns[:episodes])

    def close(self) -> None:
        if self._envs is not None:
            self._envs.close()
            self._envs = None
