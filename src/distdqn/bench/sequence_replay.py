"""``distdqn bench`` for the R2D2 agent on frame stacks (Atari): replay bytes per env step.

R2D2's sequences overlap (a new one every ``r2d2.sequence_period`` steps, each
``burn_in + sequence_length + 1`` observations of ``k`` frames), so whole-stack storage
keeps each frame about ``k (T + 1) / period`` times (8 with the published 80/40/40). A
frame-deduplicating replay keeps it once. The figure: a real actor of the run's config
(``distdqn.program.build_actor``, frame deduplication on) steps the env and fills the run's
replay (``build_replay``) with its chunks, up to ``sequences`` sequences (no overwrite);
then the replay's bytes (``storage.nbytes``: frames with their links, and the sequences'
other fields and frame ids) over the env steps collected. The ceiling: the unique-frame
bound, one frame per env step. Target: at most 1.1 x the bound. For reference the
whole-stack bytes per env step of the same sequences are reported too.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from distdqn.bench.report import Row, say
from distdqn.config import ExperimentConfig, replace
from distdqn.envs import EnvSpaces

MEMORY_TARGET = 1.1
"""Replay bytes per env step at most this multiple of one frame's bytes (issue 16)."""
SEQUENCES = 256
"""Sequences the row collects by default (256 x period 40 = about 10k env steps)."""


def measure_sequence_replay(cfg: ExperimentConfig, spaces: EnvSpaces, sequences: int = SEQUENCES) -> dict[str, Any]:
    """Fill the run's frame-deduplicating replay from one actor (module docstring).

    Raises:
        ValueError: the observations are not frame stacks (``replay.frame_dedup`` cannot
            be on for them).
    """
    from distdqn.program import build_actor, build_replay, frame_dedup_enabled, item_spec

    room = max(int(sequences), cfg.learner.batch_size) + cfg.actor.chunk_size  # the last chunk overwrites nothing
    c = replace(cfg, **{"replay.frame_dedup": "on", "replay.capacity": room,
                        "replay.min_replay_size": cfg.learner.batch_size, "actor.num_actors": 1})
    if not frame_dedup_enabled(c, spaces):
        raise ValueError(f"observations of shape {spaces.obs_shape} are not frame stacks")
    actor, replay = build_actor(c, spaces, 0), build_replay(c, spaces)
    env_steps, t0 = 0, time.perf_counter()
    try:
        while replay.inserted < sequences:
            chunk = actor.step()
            if chunk is None:
                continue
            if replay.inserted + len(chunk) > room:  # an episode end can emit many at once
                break
            env_steps += chunk.env_steps
            replay.insert(chunk)
    finally:
        actor.close()
    wall = time.perf_counter() - t0
    st = replay.storage
    frame = int(np.prod(spaces.obs_shape[1:])) * np.dtype(spaces.obs_dtype).itemsize
    whole = item_spec(replace(c, **{"replay.frame_dedup": "off"}), spaces)
    whole_bytes = sum(int(np.prod(f.shape)) * f.np_dtype.itemsize for _, f in whole.fields)
    return {"sequences": int(replay.inserted), "env_steps": int(env_steps), "frames_stored": int(st.frames_written),
            "replay_bytes": int(st.nbytes), "bytes_per_env_step": st.nbytes / max(env_steps, 1),
            "frame_bytes": frame, "whole_bytes_per_sequence": whole_bytes,
            "whole_bytes_per_env_step": whole_bytes * replay.inserted / max(env_steps, 1),
            "sequence_period": c.r2d2.sequence_period, "sequence_steps": c.r2d2.burn_in + c.r2d2.sequence_length,
            "wall_s": wall}


def sequence_replay_rows(cfg: ExperimentConfig, spaces: EnvSpaces, report: dict[str, Any],
                         sequences: int = SEQUENCES) -> list[Row]:
    """The replay-memory rows; figures into ``report["sequence_replay"]``."""
    say(f"(f) R2D2 replay: one actor fills {sequences} sequences (frame dedup)")
    rep = measure_sequence_replay(cfg, spaces, sequences)
    report["sequence_replay"] = rep
    frame = float(rep["frame_bytes"])
    return [
        Row(f"(f) replay memory: bytes/env step, {rep['sequences']} sequences of {rep['sequence_steps']} steps "
            f"every {rep['sequence_period']}", rep["bytes_per_env_step"], frame, "(one frame)",
            ("<=", MEMORY_TARGET)),
        Row("(f) the same sequences with whole stacks: bytes/env step", rep["whole_bytes_per_env_step"], frame,
            "(one frame)"),
    ]


def sequence_replay_notes(report: dict[str, Any]) -> list[str]:
    rep = report["sequence_replay"]
    return [f"(f) {rep['env_steps']:,} env steps, {rep['frames_stored']:,} frames stored (one per step and one per "
            f"episode start), {rep['replay_bytes']:,} replay bytes; collected in {rep['wall_s']:.1f} s."]
