"""``distdqn bench``: throughput and time-to-solve, each figure next to a ceiling measured
in the same run (see ``benchmarks/README.md``). The public API, for ``benchmarks/`` scripts
and tests:

- :func:`main` (the command; :func:`bench_config`, :func:`bench_mode`);
- the rows: :mod:`~distdqn.bench.classic` (a-d), :mod:`~distdqn.bench.env_rows` (env mode),
  :mod:`~distdqn.bench.replay_rows` (replay throughput and memory);
- their tools: :class:`BareUpdate`, :func:`random_transitions`, :func:`timed`,
  :func:`steady_state`, :class:`Row`, :func:`render`.
"""

from distdqn.bench.classic import measure_full_run, throughput_rows
from distdqn.bench.cli import bench_config, bench_mode, main
from distdqn.bench.collection import (
                                      bare_collector,
                                      measure_collection,
                                      measure_collection_ceiling,
                                      measure_collection_rounds,
)
from distdqn.bench.common import SteadyState, random_transitions, steady_state, timed
from distdqn.bench.learning import BareUpdate, measure_learning
from distdqn.bench.replay_rows import (
                                      FRAME,
                                      FRAME_BYTES,
                                      ReplaySpec,
                                      SyntheticActor,
                                      fill,
                                      measure_replay,
                                      rss_bytes,
)
from distdqn.bench.report import BenchError, Row, render
from distdqn.bench.solve import distdqn_time_to_solve, sb3_time_to_solve

__all__ = [
    "FRAME",
    "FRAME_BYTES",
    "BareUpdate",
    "BenchError",
    "ReplaySpec",
    "Row",
    "SteadyState",
    "SyntheticActor",
    "bare_collector",
    "bench_config",
    "bench_mode",
    "distdqn_time_to_solve",
    "fill",
    "main",
    "measure_collection",
    "measure_collection_ceiling",
    "measure_collection_rounds",
    "measure_full_run",
    "measure_learning",
    "measure_replay",
    "random_transitions",
    "render",
    "rss_bytes",
    "sb3_time_to_solve",
    "steady_state",
    "throughput_rows",
    "timed",
]
