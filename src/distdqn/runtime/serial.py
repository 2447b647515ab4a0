"""Serial runtime: every role in one process, wired as in the distributed runtimes,
stepping in a fixed order. Deterministic for a seed (same seed, same ``metrics.csv``)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from distdqn.config import ExperimentConfig
from distdqn.core import NonFiniteLossError
from distdqn.envs import EnvSpaces
from distdqn.program import build_actor
from distdqn.runtime.common import Coordinator

log = logging.getLogger(__name__)


def run_serial(cfg: ExperimentConfig, spaces: EnvSpaces, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train in one process. Returns the summary (also written to ``summary.json``).

    Order per iteration: actor k steps until it has a chunk; the chunk is inserted once
    the rate limiter allows (learning meanwhile); then the learner takes every update the
    rate limiter allows (one per chunk when ``samples_per_insert`` is 0).
    """
    co = Coordinator(cfg, spaces, run_dir, deterministic=True, resume=resume)
    actors = [build_actor(cfg, spaces, i) for i in range(cfg.actor.num_actors)]
    if co.restored_extra and "actors" in co.restored_extra:
        for actor, st in zip(actors, co.restored_extra["actors"]):
            actor.load_state_dict(st)
        turn = int(co.restored_extra.get("turn", 0))
    else:
        turn = 0
    stop = {"flag": False}
    old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))
    next_log = (co.c.env_steps // cfg.serial_log_steps + 1) * cfg.serial_log_steps
    spi_off = cfg.replay.samples_per_insert == 0
    error: NonFiniteLossError | None = None
    try:
        while co.c.env_steps < cfg.total_env_steps and not stop["flag"]:
            actor = actors[turn % len(actors)]
            turn += 1
            chunk = None
            while chunk is None:
                actor.maybe_sync(co.ps.get_params)
                chunk = actor.step()
            while not co.can_insert(len(chunk)):
                co.learn_step()
            co.ingest(chunk)
            if spi_off:
                if co.can_learn():
                    co.learn_step()
            else:
                while co.can_learn():
                    co.learn_step()
            if co.checkpoint_due():
                co.checkpoint({"actors": [a.state_dict() for a in actors], "turn": turn})
            if co.c.env_steps >= next_log:
                co.log_row()
                next_log = (co.c.env_steps // cfg.serial_log_steps + 1) * cfg.serial_log_steps
            if co.eval_due() and co.evaluate():
                co.stop_reason = "target_return"
                break
        else:
            co.stop_reason = "signal" if stop["flag"] else "total_env_steps"
    except KeyboardInterrupt:
        co.stop_reason = "interrupted"
    except NonFiniteLossError as exc:
        co.stop_reason = f"error: {exc}"
        error = exc
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    co.checkpoint({"actors": [a.state_dict() for a in actors], "turn": turn})
    if error is None and co.stop_reason != "target_return":
        co.evaluate()
    for a in actors:
        a.close()
    summary = co.finish()
    if error is not None:
        raise error
    return summary

