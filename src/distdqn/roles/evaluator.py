"""The Evaluator role: greedy (or low-epsilon) episodes on its own environments."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from distdqn.agents.inference import trace_for_inference
from distdqn.config import EnvConfig
from distdqn.core import load_flat_params
from distdqn.envs import make_vector_env

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Tries of one evaluation (each on freshly made envs) before it fails."""


class EvaluationFailed(RuntimeError):
    """The evaluator's envs raised in every one of :data:`MAX_ATTEMPTS` tries of one
    evaluation (the message names the last error)."""


class _EnvRaised(Exception):
    def __init__(self, exc: BaseException):
        super().__init__(exc)
        self.exc = exc


def _env_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; whatever a (user's) env raises comes out as :class:`_EnvRaised`,
    so that errors of distdqn's own code are never mistaken for an env crash."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise _EnvRaised(exc) from exc


def _argmax(outputs: torch.Tensor) -> torch.Tensor:
    return outputs.argmax(dim=1)


class Evaluator:
    """Runs whole episodes with a fixed policy and reports their real (unclipped) returns.

    Episodes run in parallel in a vector env of ``min(episodes, max_parallel)`` copies;
    each evaluation ``k`` is seeded from ``(seed, k)`` so results are reproducible.

    Args:
        env_cfg: environment (the same preprocessing as training).
        network: the agent's network used for acting (parameters loaded per call).
        seed: root of the evaluation seeds.
        epsilon: exploration during evaluation.
        trace: act through a TorchScript trace of ``network`` (see
            :func:`distdqn.agents.inference.trace_for_inference`; the same values).
        greedy: the agent's greedy actions ``[B]`` from the network's outputs (default:
            their argmax, DQN's).
        stateful: for a recurrent agent, ``stateful(network, n)`` makes the forward pass of
            n envs (called with observations, then ``after_step(actions, reward, done)``
            each step); None: ``network`` itself.
    """

    def __init__(self, env_cfg: EnvConfig, network: nn.Module, seed: int, epsilon: float = 0.0, max_parallel: int = 20,
                 trace: bool = True, greedy: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 stateful: Callable[[nn.Module, int], Any] | None = None):
        # Whole games: a lost life ends a training episode (episodic_life), never an evaluation.
        self.env_cfg = dataclasses.replace(env_cfg, episodic_life=False)
        self.net, self.seed, self.epsilon = network, seed, epsilon
        self.net.eval()
        self.max_parallel = max_parallel
        self.greedy = greedy if greedy is not None else _argmax
        self.stateful = stateful
        self.evaluations = 0
        self.env_restarts = 0
        """Envs closed and made again because one raised (the actors' ``env_restarts``)."""
        self._envs = None
        self._trace = trace
        self._policy: Callable[[torch.Tensor], torch.Tensor] | None = None  # traced on first use

    def evaluate(self, params: np.ndarray, episodes: int) -> np.ndarray:
        """Returns ``[episodes]`` float64 episode returns of the policy given by ``params``
        (a flat float32 vector, :func:`~distdqn.core.load_flat_params`).

        An env that raises (making, resetting or stepping it) is closed and made again,
        counted in :attr:`env_restarts`, and the evaluation starts over with the same
        episode seeds, as an actor recreates its envs (``roles/env_runner.py``).

        Raises:
            EvaluationFailed: the envs raised in :data:`MAX_ATTEMPTS` tries in a row.
        """
        load_flat_params(self.net, params)
        index = self.evaluations
        self.evaluations += 1
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return self._episodes(index, episodes)
            except _EnvRaised as raised:
                exc = raised.exc
                self.env_restarts += 1
                log.warning("evaluator: env raised %r (try %d of %d); recreating it", exc, attempt, MAX_ATTEMPTS)
                self._drop_envs()
        raise EvaluationFailed(f"evaluation {index}: the env raised in {MAX_ATTEMPTS} tries in a row, "
                               f"last {type(exc).__name__}: {exc}")

    def _drop_envs(self) -> None:
        if self._envs is not None:
            try:
                self._envs.close()
            except Exception:  # noqa: BLE001, S110 - a broken env may fail to close too; it is dropped anyway
                pass
            self._envs = None

    def _episodes(self, index: int, episodes: int) -> np.ndarray:
        n = min(episodes, self.max_parallel)
        if self._envs is None or self._envs.num_envs != n:
            self._drop_envs()
            self._envs = _env_call(make_vector_env, self.env_cfg, n)
        envs = self._envs
        rng = np.random.default_rng([self.seed, 99, index])
        num_actions = int(envs.single_action_space.n)
        seeds = [int(s) for s in rng.integers(2**31 - 1, size=n)]
        obs, _ = _env_call(envs.reset, seed=seeds)
        if self.stateful is not None:  # a recurrent agent: fresh state per evaluation
            policy = self.stateful(self.net, n)
        else:
            if self._policy is None:
                self._policy = (trace_for_inference(self.net, torch.from_numpy(np.asarray(obs))) if self._trace
                                else self.net)
            policy = self._policy
        started = n
        active = np.ones(n, dtype=bool)
        returns: list[float] = []
        while active.any():
            with torch.inference_mode():
                greedy = self.greedy(policy(torch.from_numpy(np.asarray(obs)))).numpy()
            explore = rng.random(n) < self.epsilon
            actions = np.where(explore, rng.integers(num_actions, size=n), greedy)
            obs, reward, term, trunc, info = _env_call(envs.step, actions)
            done = np.logical_or(term, trunc)
            if self.stateful is not None:
                policy.after_step(actions, reward, done)
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
                reset_obs, _ = _env_call(envs.reset, seed=new_seeds, options={"reset_mask": done})
                obs = np.where(done.reshape(-1, *([1] * (np.ndim(obs) - 1))), reset_obs, obs)
        return np.array(returns[:episodes])

    def close(self) -> None:
        self._drop_envs()
