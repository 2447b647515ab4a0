"""Golden learning curves: the serial runtime reproduces, bit for bit, the ``metrics.csv``
recorded with the code from before agents, topologies and runtimes were separated.

The files in ``tests/golden/`` were written by

    distdqn train --runtime serial --preset PRESET --seed SEED --total-env-steps 20000 \\
        --set eval.target_return=null --no-progress

on CartPole-v1 (apex seeds 0 and 1, gorila and sync seed 0). The run goes through the CLI,
as a user's would.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"

CASES = [("apex", 0), ("apex", 1), ("gorila", 0), ("sync", 0)]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("preset,seed", CASES, ids=[f"{p}-s{s}" for p, s in CASES])
def test_serial_reproduces_golden_metrics(tmp_path, preset, seed):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "distdqn.cli", "train", "--runtime", "serial", "--preset", preset,
           "--seed", str(seed), "--total-env-steps", "20000", "--set", "eval.target_return=null",
           "--no-progress", "--run-dir", str(run_dir)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    want = _rows(GOLDEN / f"{preset}-s{seed}.csv")
    got = _rows(run_dir / "metrics.csv")
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        for col, value in w.items():
            assert g.get(col) == value, f"row {i} column {col}: {g.get(col)!r} != golden {value!r}"
