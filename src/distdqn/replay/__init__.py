"""Experience replay: storage + sampler + rate limiter behind the :class:`Replay` front end.

- :mod:`~distdqn.replay.storage`: ring storage built from an item spec;
- :mod:`~distdqn.replay.frame_storage`: frame-deduplicated storage of frame-stack fields (Atari);
- :mod:`~distdqn.replay.samplers`: uniform, prioritized (Schaul et al. 2016) and FIFO sampling;
- :mod:`~distdqn.replay.sum_tree`, :mod:`~distdqn.replay.rate_limiter`;
- :mod:`~distdqn.replay.pools`: one pool per actor behind the same interface.
"""

from distdqn.replay.frame_storage import FrameStorage, default_frame_capacity
from distdqn.replay.rate_limiter import RateLimiter
from distdqn.replay.replay import Replay, make_replay
from distdqn.replay.samplers import FifoSampler, PrioritizedSampler, UniformSampler
from distdqn.replay.storage import RingStorage
from distdqn.replay.sum_tree import SumTree

__all__ = ["FifoSampler", "FrameStorage", "PrioritizedSampler", "RateLimiter", "Replay", "RingStorage", "SumTree",
           "UniformSampler", "default_frame_capacity", "make_replay"]
