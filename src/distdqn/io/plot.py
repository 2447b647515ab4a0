"""``distdqn plot``: learning curves from one or more runs' ``metrics.csv`` (matplotlib, PNG)."""

from __future__ import annotations

import csv
from pathlib import Path

PANELS = [("episode_return", "episode_return (training)"), ("eval_return", "eval_return (greedy)"),
          ("td_loss", "td_loss"), ("sps", "sps (env steps/s)")]


def _read(path: Path) -> dict[str, list[float]]:
    cols: dict[str, list[float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                try:
                    cols.setdefault(k, []).append(float(v) if v not in ("", None) else float("nan"))
                except ValueError:
                    cols.setdefault(k, []).append(float("nan"))
    return cols


def plot_runs(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Plot the standard panels against ``env_steps`` for each run; returns the PNG path.

    Raises:
        FileNotFoundError: a run directory has no ``metrics.csv``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {}
    for d in run_dirs:
        p = Path(d) / "metrics.csv"
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found (is {d} a run directory?)")
        data[Path(d).name] = _read(p)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, PANELS):
        for name, cols in data.items():
            if key in cols and "env_steps" in cols:
                pts = [(x, y) for x, y in zip(cols["env_steps"], cols[key]) if y == y]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
        ax.set_title(title)
        ax.set_xlabel("env_steps")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    out = out or Path(run_dirs[0]) / "metrics.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
