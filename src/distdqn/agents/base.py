"""What an agent provides (Acme's builders, reduced to what distdqn's roles call).

An agent is the *what is learned, and how* axis: its networks, its acting function, its
adder (what an actor emits from its stream of steps), the item spec storage is built from,
and its loss. Roles are generic over agents: the :class:`~distdqn.roles.actor.Actor` steps
envs with the agent's policy and feeds its adder; the
:class:`~distdqn.roles.learner.Learner` minimizes its loss. See ``docs/architecture.md``,
"How to add an agent".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from distdqn.core import Batch, ItemSpec


class Policy(Protocol):
    """The acting function of E sub-envs (one batched forward pass per step)."""

    def act(self, obs: np.ndarray, env_steps: int) -> np.ndarray:
        """``[E]`` int64 actions for ``obs`` ``[E, *obs_shape]``; ``env_steps`` are the
        actor's own (for exploration schedules)."""
        ...

    def acting_values(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """What the adder needs from the pass that chose ``actions`` (``[E]`` arrays)."""
        ...

    def final_values(self, next_obs: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> dict:
        """What the adder needs about episodes that ended in this step (may be empty)."""
        ...

    def epsilon(self, env_steps: int) -> float:
        """The exploration rate in use (for metrics)."""
        ...

    def choose(self, q: np.ndarray, env_steps: int) -> np.ndarray:
        """``[E]`` actions from ``[E, A]`` Q-values computed elsewhere (SEED RL's central
        inference). A recurrent policy also has ``pass_inputs(obs)`` and
        ``pass_outputs(rows)``, its rows of its agent's ``batched_forward`` (its per-env
        state travels with them)."""
        ...


class Adder(Protocol):
    """Items from an actor's stream of vector steps."""

    spec: ItemSpec

    @property
    def num_recorded(self) -> int:
        """An upper bound on the complete items not yet popped (cheap: checked every step)."""
        ...

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray | None,
            terminated: np.ndarray, truncated: np.ndarray, **extras: np.ndarray) -> None: ...

    def pop_items(self) -> tuple[dict[str, np.ndarray], np.ndarray | None] | None:
        """``(arrays of the complete items, their initial priorities or None)``, or None."""
        ...

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Forget the open items of the masked sub-envs (an env was recreated)."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


LossFn = Callable[[nn.Module, nn.Module, Batch, "contextlib.AbstractContextManager | None"], Any]
"""``loss(online, target, batch, autocast) -> LossOutput`` (pure)."""


class Agent(Protocol):
    """One agent, built for an experiment and its env's spaces."""

    name: str
    has_target: bool
    """Whether the learner keeps a target network (copied every ``target_update_period``)."""

    def make_network(self) -> nn.Module:
        """A fresh network (its initial weights from torch's global RNG, seeded by the caller)."""
        ...

    def network_kind(self) -> str:
        """The resolved kind of :meth:`make_network`'s network (``mlp``, ``nature_cnn``)."""
        ...

    def item_spec(self, frame_dedup: bool) -> ItemSpec: ...

    def make_policy(self, network: nn.Module, example_obs: np.ndarray, *, actor_id: int, num_actors: int,
                    rng: np.random.Generator, compute_values: bool) -> Policy: ...

    def make_adder(self, num_envs: int, frame_dedup: bool, compute_priorities: bool) -> Adder: ...

    def chunk_trigger(self, chunk_size: int, num_envs: int) -> int:
        """The adder's ``num_recorded`` at which an actor cuts a chunk (``actor.chunk_size``
        items at least)."""
        ...

    def loss(self) -> LossFn: ...

    def greedy(self, outputs: torch.Tensor) -> torch.Tensor:
        """``[B]`` greedy actions from the network's outputs (evaluation)."""
        ...
