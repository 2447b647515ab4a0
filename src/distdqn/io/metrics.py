"""Metrics: ``metrics.csv``, TensorBoard events and a live progress display (rich)."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Any

# Standard names (DESIGN.md). Order is the CSV column order.
COLUMNS = [
    "env_steps", "env_frames", "updates", "wall_time", "sps", "ups",
    "episode_return", "episode_length", "episodes", "eval_return",
    "td_loss", "q_mean", "grad_norm", "epsilon", "replay_size", "replay_bytes", "samples_per_insert",
    "param_version", "param_lag", "beta", "staleness", "dropped_stale_gradients",
    "actor_restarts", "learner_restarts", "replay_restarts", "parameter_server_restarts", "env_restarts",
    "produced", "inserted", "rejected", "dropped",
]
# Wall-clock columns: kept out of the CSV when it must be deterministic (serial runtime).
TIMING_COLUMNS = {"wall_time", "sps", "ups", "inference_latency_ms_p50", "inference_latency_ms_p99", "env_step_share"}


class MetricsLogger:
    """Writes one row per :meth:`log` call to CSV and TensorBoard and refreshes the progress bar.

    Args:
        run_dir: run directory; ``metrics.csv`` and TensorBoard events go there.
        total_env_steps: for the progress bar.
        deterministic: leave wall-clock columns out of the CSV (they still go to TensorBoard).
        progress: show a live progress display.
        append: append to an existing ``metrics.csv`` (resume).
        extra_columns: the agent's own metrics, as columns after the common ones.
    """

    def __init__(self, run_dir: Path, total_env_steps: int, deterministic: bool = False,
                 progress: bool = True, append: bool = False, extra_columns: tuple[str, ...] = ()):
        self.run_dir = Path(run_dir)
        self.columns = [c for c in COLUMNS if not (deterministic and c in TIMING_COLUMNS)]
        self.columns += [c for c in extra_columns
                         if c not in self.columns and not (deterministic and c in TIMING_COLUMNS)]
        path = self.run_dir / "metrics.csv"
        new = not (append and path.exists())
        self._file = open(path, "w" if new else "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        if new:
            self._csv.writeheader()
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        except Exception as exc:  # noqa: BLE001 - TensorBoard is optional at run time
            print(f"warning: TensorBoard logging disabled ({exc})", file=sys.stderr)
        self._progress = None
        if progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]env_steps"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"), refresh_per_second=4,
            )
            self._task = self._progress.add_task("train", total=total_env_steps, info="")
            self._progress.start()

    def log(self, row: dict[str, Any]) -> None:
        clean = {k: _fmt(v) for k, v in row.items() if k in self.columns}
        self._csv.writerow(clean)
        self._file.flush()
        step = int(row.get("env_steps", 0))
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if self._progress is not None:
            info = "  ".join(
                f"{k} {_short(row.get(k))}"
                for k in ("sps", "ups", "episode_return", "eval_return", "epsilon", "td_loss")
                if row.get(k) is not None
            )
            self._progress.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._file.close()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
