"""The DQN agent (:class:`~distdqn.agents.dqn.agent.DQNAgent`): networks, epsilon-greedy
acting, the n-step adder, transition items and the double-DQN TD loss."""

from distdqn.agents.dqn.agent import DQNAgent
from distdqn.agents.dqn.spec import transition_batch, transition_chunk, transition_spec

__all__ = ["DQNAgent", "transition_batch", "transition_chunk", "transition_spec"]
