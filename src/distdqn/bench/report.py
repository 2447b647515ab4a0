"""The bench's result table (:class:`Row`, :func:`render`) and its plumbing."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np


class BenchError(RuntimeError):
    """A measurement could not be taken (e.g. a ceiling process died)."""


def say(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@dataclass
class Row:
    """One line of the result table.

    Attributes:
        label: what is measured.
        value: the figure (None: not measured).
        ceiling: the reference it is compared with (None: none).
        reference: what the ceiling is.
        target: the target on ``value / ceiling`` as ``(">=" | "<=", bound)``, or None.
        fmt: format spec of ``value`` and ``ceiling``.
    """

    label: str
    value: float | None
    ceiling: float | None = None
    reference: str = ""
    target: tuple[str, float] | None = None
    fmt: str = ",.0f"

    @property
    def ratio(self) -> float | None:
        """``value / ceiling``; an infinite value (not solved) gives inf, an infinite
        ceiling 0, both nan; None when either is missing."""
        v, c = self.value, self.ceiling
        if v is None or c is None:
            return None
        if math.isinf(v) or math.isinf(c):
            return math.nan if math.isinf(v) and math.isinf(c) else (math.inf if math.isinf(v) else 0.0)
        return v / c if c else math.inf

    @property
    def met(self) -> bool | None:
        """Whether the ratio meets the target (None: no target or no ratio)."""
        r = self.ratio
        if self.target is None or r is None or math.isnan(r):
            return None
        op, bound = self.target
        return r >= bound if op == ">=" else r <= bound


def _num(v: float | None, fmt: str) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "not solved"
    return format(v, fmt)


def render(rows: list[Row], notes: list[str]) -> None:
    """Print the rows as a rich table, then the notes."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    table = Table(title="distdqn bench", show_lines=False)
    table.add_column("row")
    table.add_column("figure", justify="right")
    table.add_column("ceiling / reference (same run)", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target", justify="right")
    table.add_column("", justify="center")
    for r in rows:
        ceiling = _num(r.ceiling, r.fmt)
        if r.reference:
            ceiling = f"{ceiling} {r.reference}" if r.ceiling is not None else r.reference
        ratio = r.ratio
        ratio_txt = "-" if ratio is None else ("n/a" if math.isnan(ratio) else f"{ratio:.2f}")
        target = "-" if r.target is None else f"{r.target[0]} {r.target[1]:.2f}"
        met = r.met
        status = "" if met is None else ("[green]ok[/green]" if met else "[red]MISS[/red]")
        table.add_row(r.label, _num(r.value, r.fmt), ceiling, ratio_txt, target, status)
    console.print(table)
    for n in notes:
        console.print(f"- {n}", highlight=False)


def jsonable(v: Any) -> Any:
    """Floats that JSON cannot hold (inf, nan) become None; containers recursively."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v
