"""The local runtime (the default): processes and shared memory on this machine.

See :mod:`~distdqn.runtime.local.runtime` for the design; :func:`run_local` runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distdqn.config import ExperimentConfig
from distdqn.envs import EnvSpaces
from distdqn.runtime.driver import drive
from distdqn.runtime.local.evaluator import EvalProcess
from distdqn.runtime.local.runtime import LocalRuntime

__all__ = ["EvalProcess", "LocalRuntime", "run_local"]


def run_local(cfg: ExperimentConfig, spaces: EnvSpaces, run_dir: Path, resume: bool = False,
              collect_only: bool = False) -> dict[str, Any]:
    """Train with ``cfg.actor.num_actors`` actor processes. Returns the summary.

    Args:
        collect_only: actors collect and the learner only inserts (benchmarking the
            collection path); requires ``replay.samples_per_insert == 0``.

    Raises:
        NonFiniteLossError, RunAborted: after the final checkpoint and summary.
        FileNotFoundError: ``resume`` without a usable checkpoint.
    """
    torch.set_num_threads(cfg.learner.torch_threads)
    runtime = LocalRuntime(cfg, spaces, collect_only)
    runtime.early_start(resume)
    return drive(cfg, spaces, run_dir, runtime, resume)
