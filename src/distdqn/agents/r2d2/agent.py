"""The R2D2 agent (Kapturowski et al. 2019): a recurrent Q-network
(:mod:`~distdqn.agents.r2d2.network`) acting epsilon-greedily with per-env LSTM state,
sequences with their stored state (:mod:`~distdqn.agents.r2d2.sequence`), and the
rescaled n-step double-Q loss with burn-in (:mod:`~distdqn.agents.r2d2.loss`).

Acting (:class:`RecurrentEpsilonGreedy`) keeps each sub-env's LSTM state, previous action
and previous reward, and resets them when the sub-env's episode ends
(:meth:`RecurrentEpsilonGreedy.after_step`, which the actor calls after every step).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from distdqn.agents.dqn.agent import EpsilonGreedy
from distdqn.agents.r2d2.loss import r2d2_loss
from distdqn.agents.r2d2.network import make_r2d2_network
from distdqn.agents.r2d2.sequence import SequenceAdder, sequence_spec
from distdqn.config import ExperimentConfig
from distdqn.core import ItemSpec
from distdqn.envs import EnvSpaces
from distdqn.replay.frame_storage import default_frame_capacity


def acting_step(net: nn.Module, obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor,
                h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of N sub-envs through the recurrent network: ``obs [N, *obs_shape]``,
    ``prev_action [N]`` int64, ``prev_reward [N]``, ``h``/``c [N, lstm_size]`` ->
    ``(q [N, A], h, c)``, float32."""
    q, (h, c) = net(obs.unsqueeze(1), prev_action.unsqueeze(1), prev_reward.unsqueeze(1), (h, c))
    return q[:, 0], h, c


class RecurrentState:
    """E sub-envs' LSTM state and previous action/reward, stepped through ``net`` one
    observation at a time (acting and evaluation)."""

    def __init__(self, net: nn.Module, num_envs: int):
        self.net, self.num_envs = net, num_envs
        self.h, self.c = net.initial_state(num_envs)
        self.prev_action = np.full(num_envs, -1, dtype=np.int64)
        self.prev_reward = np.zeros(num_envs, dtype=np.float32)

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        """``[E, A]`` Q-values for ``obs`` ``[E, *obs_shape]``; the state moves on."""
        with torch.inference_mode():
            q, self.h, self.c = acting_step(self.net, obs, torch.from_numpy(self.prev_action),
                                            torch.from_numpy(self.prev_reward), self.h, self.c)
        return q

    def after_step(self, actions: np.ndarray, reward: np.ndarray, done: np.ndarray) -> None:
        """The step's actions and rewards become the previous ones; sub-envs whose episode
        ended start over (zero state, no previous action)."""
        self.prev_action = np.asarray(actions, dtype=np.int64).copy()
        self.prev_reward = np.asarray(reward, dtype=np.float32).copy()
        if done.any():
            d = torch.from_numpy(np.asarray(done, dtype=bool))
            self.h, self.c = self.h.clone(), self.c.clone()
            self.h[d], self.c[d] = 0.0, 0.0
            self.prev_action[done], self.prev_reward[done] = -1, 0.0


class RecurrentEpsilonGreedy:
    """Epsilon-greedy actions of E sub-envs from the recurrent network (the epsilons of
    :class:`~distdqn.agents.dqn.agent.EpsilonGreedy`: Ape-X per-env or linear). The acting
    values are the state each sub-env acted from (the sequences' stored state)."""

    def __init__(self, cfg, net: nn.Module, num_envs: int, num_actions: int, actor_id: int, num_actors: int,
                 rng: np.random.Generator):
        self.state = RecurrentState(net, num_envs)
        self.eg = EpsilonGreedy(cfg, net, num_envs, num_actions, actor_id, num_actors, rng, compute_values=False)
        self._before: dict[str, np.ndarray] = {}

    def _keep_before(self) -> None:
        """The state the sub-envs act from now: the acting values (the stored state)."""
        s = self.state
        self._before = {"h": s.h.numpy().copy(), "c": s.c.numpy().copy(), "prev_action": s.prev_action.copy(),
                        "prev_reward": s.prev_reward.copy()}

    def act(self, obs: np.ndarray, env_steps: int) -> np.ndarray:
        self._keep_before()
        return self.eg.choose(self.state(torch.from_numpy(obs)).numpy(), env_steps)

    def pass_inputs(self, obs: np.ndarray) -> dict[str, torch.Tensor]:
        """The rows of a batched pass over many policies' sub-envs (SEED RL's central
        inference, :meth:`R2D2Agent.batched_forward`): ``obs [E, *obs_shape]``,
        ``prev_action [E]`` int64, ``prev_reward [E]`` float32, ``h``/``c [E, lstm_size]``."""
        self._keep_before()
        s = self.state
        return {"obs": torch.from_numpy(obs), "prev_action": torch.from_numpy(s.prev_action),
                "prev_reward": torch.from_numpy(s.prev_reward), "h": s.h, "c": s.c}

    def pass_outputs(self, out: dict[str, torch.Tensor]) -> np.ndarray:
        """This policy's rows of the batched pass (``q [E, A]``, ``h``/``c [E, lstm_size]``
        float32): the new state moves in; returns the Q-values for :meth:`choose`."""
        self.state.h, self.state.c = out["h"], out["c"]
        return out["q"].numpy()

    def choose(self, q: np.ndarray, env_steps: int) -> np.ndarray:
        """Epsilon-greedy actions ``[E]`` from Q-values computed by a batched pass."""
        return self.eg.choose(q, env_steps)

    def acting_values(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        return dict(self._before)

    def final_values(self, next_obs: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> dict:
        return {}  # the learner bootstraps from the final observation itself

    def after_step(self, actions: np.ndarray, reward: np.ndarray, done: np.ndarray) -> None:
        self.state.after_step(actions, reward, done)

    def state_dict(self) -> dict:
        s = self.state
        return {"h": s.h.clone(), "c": s.c.clone(), "prev_action": torch.from_numpy(s.prev_action.copy()),
                "prev_reward": torch.from_numpy(s.prev_reward.copy())}

    def load_state_dict(self, state: dict) -> None:
        s = self.state
        s.h, s.c = state["h"].clone(), state["c"].clone()
        s.prev_action, s.prev_reward = state["prev_action"].numpy().copy(), state["prev_reward"].numpy().copy()

    def reset_state(self) -> None:
        """Every sub-env starts over (the env was recreated)."""
        self.state = RecurrentState(self.state.net, self.state.num_envs)

    def epsilons(self, env_steps: int) -> np.ndarray:
        return self.eg.epsilons(env_steps)

    def epsilon(self, env_steps: int) -> float:
        return self.eg.epsilon(env_steps)

    def reset_schedule(self) -> None:
        self.eg.reset_schedule()


class R2D2Agent:
    """R2D2's networks, acting, adder, item spec and loss for one experiment (``r2d2``,
    ``network``, ``actor``, ``learner`` sections)."""

    name = "r2d2"
    has_target = True

    def __init__(self, cfg: ExperimentConfig, spaces: EnvSpaces):
        self.cfg, self.spaces = cfg, spaces
        r = cfg.r2d2
        self.steps = r.burn_in + r.sequence_length

    def make_network(self) -> nn.Module:
        return make_r2d2_network(self.cfg.network, self.cfg.r2d2, self.spaces.obs_shape, self.spaces.num_actions)

    def network_kind(self) -> str:
        return self.make_network().kind

    def item_spec(self, frame_dedup: bool) -> ItemSpec:
        return sequence_spec(self.spaces.obs_shape, self.spaces.obs_dtype, self.steps, self.cfg.r2d2.lstm_size,
                             frame_dedup)

    def frame_capacity(self, capacity: int) -> int:
        """Frame slots of a frame-deduplicating replay of ``capacity`` sequences: each brings
        about ``sequence_period`` new frames; and while one fills, every env of the run
        writes frames, the lag its oldest frame must survive: its T steps and the k - 1
        frames before its first stack, a chunk's wait on each side (its own and a slower
        producer's), and a period for sub-envs whose sequences complete together."""
        c, period = self.cfg, self.cfg.r2d2.sequence_period
        envs = c.actor.num_actors * c.env.envs_per_actor
        per_producer = c.env.envs_per_actor // (c.inference.splits if c.topology == "seed" else 1)
        chunk_wait = -(-c.actor.chunk_size * period // max(per_producer, 1))
        k = int(self.spaces.obs_shape[0])
        return default_frame_capacity(capacity, period, lag=(self.steps + k + 2 * chunk_wait + period) * envs)

    def make_policy(self, network: nn.Module, example_obs: np.ndarray, *, actor_id: int, num_actors: int,
                    rng: np.random.Generator, compute_values: bool) -> RecurrentEpsilonGreedy:
        return RecurrentEpsilonGreedy(self.cfg.actor, network, example_obs.shape[0], self.spaces.num_actions,
                                      actor_id, num_actors, rng)

    def make_adder(self, num_envs: int, frame_dedup: bool, compute_priorities: bool) -> SequenceAdder:
        return SequenceAdder(num_envs, self.steps, self.cfg.r2d2.sequence_period, self.item_spec(frame_dedup))

    def chunk_trigger(self, chunk_size: int, num_envs: int) -> int:
        """Sequences per chunk: ``actor.chunk_size``."""
        return chunk_size

    def loss(self):
        r, lr = self.cfg.r2d2, self.cfg.learner
        return functools.partial(r2d2_loss, burn_in=r.burn_in, n_step=self.cfg.actor.n_step, gamma=lr.gamma,
                                 eta=r.priority_eta, eps=r.rescale_eps, kind="huber" if lr.loss == "huber" else "mse")

    def eval_policy(self, network: nn.Module, num_envs: int) -> RecurrentState:
        """Greedy evaluation's stateful forward pass for ``num_envs`` envs."""
        return RecurrentState(network, num_envs)

    @staticmethod
    def batched_forward(network: nn.Module, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One acting step of N sub-envs (the concatenated
        :meth:`RecurrentEpsilonGreedy.pass_inputs`): ``q [N, A]`` and the new ``h``/``c``
        ``[N, lstm_size]``, float32."""
        q, h, c = acting_step(network, rows["obs"], rows["prev_action"], rows["prev_reward"], rows["h"], rows["c"])
        return {"q": q, "h": h, "c": c}

    @staticmethod
    def greedy(outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=1)
