"""The classic bench rows' bookkeeping (no processes: the measurements are stubbed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from distdqn.bench import collection as bench
from distdqn.config import from_dict
from distdqn.program import spaces_for


def test_collection_rounds_set_each_run_against_the_ceilings_around_it(monkeypatch, tmp_path: Path) -> None:
    """(a) alternates ceiling, run, ceiling, ...: each run is compared with the mean of the
    two ceilings beside it; the row's figures are the means over the runs."""
    calls: list[tuple[str, float]] = []
    ceilings = iter([100.0, 80.0, 120.0, 60.0])
    runs = iter([72.0, 90.0, 45.0])

    def ceiling(cfg, spaces, seconds):
        calls.append(("ceiling", seconds))
        return {"sps": next(ceilings)}

    def collect(cfg, spaces, seconds, expected_sps, run_dir, warm_env_steps=None):
        calls.append(("run", seconds))
        return {"sps": next(runs), "steady_state": None, "warm_env_steps": 20_000, "expected": expected_sps}

    monkeypatch.setattr(bench, "measure_collection_ceiling", ceiling)
    monkeypatch.setattr(bench, "measure_collection", collect)
    cfg = from_dict({})
    out = bench.measure_collection_rounds(cfg, spaces_for(cfg), 9.0, tmp_path, rounds=3)
    assert [c[0] for c in calls] == ["ceiling", "run", "ceiling", "run", "ceiling", "run", "ceiling"]
    assert [c[1] for c in calls] == [1.5, 3.0, 1.5, 3.0, 1.5, 3.0, 1.5]
    assert out["round_ratios"] == pytest.approx([72 / 90, 90 / 100, 45 / 90])
    assert out["sps"] == pytest.approx(69.0) and out["ceiling_sps"] == pytest.approx(280 / 3)
    assert [r["expected"] for r in out["runs"]] == [100.0, 80.0, 120.0]  # sized from the last ceiling


def test_soak_sps_over_time_reads_metrics_rows_in_windows(tmp_path: Path) -> None:
    from distdqn.bench.soak import sps_over_time

    csv = tmp_path / "metrics.csv"
    csv.write_text("env_steps,wall_time,sps\n" + "".join(f"{1000 * t},{t},0\n" for t in range(0, 31, 5)))
    got = sps_over_time(csv, window_s=10.0)
    assert [t for t, _ in got] == [10.0, 20.0, 30.0]
    assert all(v == pytest.approx(1000.0) for _, v in got)


@pytest.mark.slow
def test_soak_kills_actors_and_reports_rss_and_exact_accounting(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, "-m", "distdqn.cli", "bench", "--soak", "0.3", "--soak-kill-period", "5",
                        "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "soak targets" in r.stdout
    rep = json.loads(out.read_text())
    assert rep["kills"] >= 2 and rep["accounting"]["actor_restarts"] == rep["kills"]
    assert rep["accounting"]["accounting_ok"] and rep["accounting"]["dropped"] == 0
    assert set(rep["rss_ratio"]) >= {"driver", "fork_server", "actors"}
    assert all(0.5 < v < 2.0 for v in rep["rss_ratio"].values())


def test_impala_learning_row_times_the_learner_and_the_bare_vtrace_loop(tmp_path: Path) -> None:
    from distdqn.bench.impala_learning import measure_impala_learning

    cfg = from_dict({"preset": "impala", "progress": False})
    out = measure_impala_learning(cfg, spaces_for(cfg), 0.4, tmp_path)
    assert out["ups"] > 0 and out["ceiling_ups"] > 0
    assert out["batch_size"] == 32 and out["unroll_length"] == 20
