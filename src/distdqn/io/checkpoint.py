"""Atomic checkpoints and safe loading.

A checkpoint is ``checkpoints/ckpt-<env_steps>-<updates>.pt`` plus a completion marker
``ckpt-<...>.complete`` holding its size and SHA-256, written last. Both are written to a
temporary name, fsynced and renamed, so a crash leaves either a complete checkpoint or
none. Loading uses ``torch.load(weights_only=True)`` (no arbitrary unpickling), checks
the marker, and refuses a truncated or corrupt file with its path, falling back to the
previous complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint could not be used; the message names its path."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """``write(f)`` into a temporary file, fsync, rename to ``path``. On failure (a full
    disk: ``OSError(ENOSPC)``) the temporary file is removed, so that it holds no space
    the next checkpoint needs, and the error is raised; ``path`` is untouched."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(run_dir: Path, env_steps: int, updates: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` (tensors, dicts, lists and Python scalars only) atomically; keep the
    newest ``keep`` complete checkpoints. Returns the checkpoint's path.

    Raises:
        OSError: the checkpoint could not be written (nothing of it is left behind; the
            earlier checkpoints are untouched).
    """
    ckdir = Path(run_dir) / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{env_steps:012d}-{updates:010d}"
    path = ckdir / f"{name}.pt"
    _atomic_write(path, lambda f: torch.save(state, f))
    marker = {"file": path.name, "size": path.stat().st_size, "sha256": _sha256(path),
              "env_steps": env_steps, "updates": updates}
    try:
        _atomic_write(ckdir / f"{name}.complete", lambda f: f.write(json.dumps(marker).encode()))
    except BaseException:
        path.unlink(missing_ok=True)  # a checkpoint without its marker is never loaded: free its space
        raise
    for old in complete_checkpoints(run_dir)[keep:]:
        if old == path:
            continue
        old.unlink(missing_ok=True)
        old.with_suffix(".complete").unlink(missing_ok=True)
    return path


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files that have a completion marker, newest written first (a run resumed
    from an older checkpoint writes checkpoints whose names sort below a refused newer one)."""
    ckdir = Path(run_dir) / "checkpoints"
    if not ckdir.is_dir():
        return []
    markers = []
    for m in ckdir.glob("ckpt-*.complete"):
        try:
            markers.append((m.stat().st_mtime_ns, m.name, m))
        except OSError:
            continue
    return [m.with_suffix(".pt") for _, _, m in sorted(markers, reverse=True)]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and verify one checkpoint.

    Raises:
        CheckpointError: missing marker, size or hash mismatch, or unreadable content.
    """
    path = Path(path)
    marker_path = path.with_suffix(".complete")
    try:
        marker = json.loads(marker_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"refusing checkpoint {path}: no valid completion marker ({exc})") from None
    if not path.is_file():
        raise CheckpointError(f"refusing checkpoint {path}: file missing")
    size = path.stat().st_size
    if size != marker.get("size"):
        raise CheckpointError(f"refusing checkpoint {path}: truncated ({size} bytes, expected {marker.get('size')})")
    if _sha256(path) != marker.get("sha256"):
        raise CheckpointError(f"refusing checkpoint {path}: corrupt (SHA-256 mismatch)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to decode means unusable
        raise CheckpointError(f"refusing checkpoint {path}: unreadable ({exc.__class__.__name__}: {exc})") from None


def load_latest(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies, skipping (and logging) refused ones; None if none."""
    for path in complete_checkpoints(run_dir):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("%s; trying the previous one", exc)
    return None
