"""Experience replay: ring storage, sum tree, rate limiter and the :class:`Replay` front end.

See :mod:`distdqn.replay.prioritized` for the sampling maths (Schaul et al. 2016) and
:mod:`distdqn.replay.frame_storage` for frame-deduplicated storage of stacked-frame
(Atari) observations.
"""

from distdqn.replay.frame_storage import FrameStorage, default_frame_capacity
from distdqn.replay.prioritized import Replay, make_replay
from distdqn.replay.rate_limiter import RateLimiter
from distdqn.replay.storage import RingStorage
from distdqn.replay.sum_tree import SumTree

__all__ = ["FrameStorage", "RateLimiter", "Replay", "RingStorage", "SumTree", "default_frame_capacity",
           "make_replay"]
