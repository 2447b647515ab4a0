"""``distdqn bench --soak MINUTES``: a long apex run on the local runtime that loses an actor
process (SIGKILL) every ``--soak-kill-period`` seconds, watched from outside.

It reports the RSS of every process of the run after warm-up and at the end (the driver,
multiprocessing's fork server and resource tracker, and the actors: a killed actor's
replacement is compared with the actors alive at warm-up, as the largest of them), env
steps/s over time (from ``metrics.csv``), and the run's accounting from ``summary.json``
after a graceful stop (SIGTERM): ``produced = inserted + rejected + dropped``, ``dropped``,
and ``actor_restarts`` against the kills. Target: every process's RSS at the end <= 1.1 x
after warm-up, and the accounting exact.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from distdqn.bench.report import BenchError, say

RSS_TARGET = 1.1
SAMPLE_S = 5.0


def children(pid: int) -> list[int]:
    """The child processes of ``pid``, sorted (from ``/proc``; Linux)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return sorted(set(out))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (``VmRSS`` of ``/proc/<pid>/status``), None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def run_processes(driver_pid: int) -> dict[str, list[int]]:
    """The run's processes by role: ``driver``, ``fork_server``, ``resource_tracker`` and
    ``actors`` (the fork server's children; evaluation runs in line in a soak)."""
    roles: dict[str, list[int]] = {"driver": [driver_pid], "fork_server": [], "resource_tracker": [], "actors": []}
    for c in children(driver_pid):
        cmd = _cmdline(c)
        if "resource_tracker" in cmd:
            roles["resource_tracker"].append(c)
        elif "forkserver" in cmd:
            roles["fork_server"].append(c)
            roles["actors"] += children(c)
    return roles


def rss_by_role(driver_pid: int) -> dict[str, float]:
    """MiB per role; ``actors`` is the largest actor's (each actor holds the same)."""
    out: dict[str, float] = {}
    for role, pids in run_processes(driver_pid).items():
        sizes = [r for r in (rss_mib(p) for p in pids) if r is not None]
        if sizes:
            out[role] = max(sizes)
    return out


def sps_over_time(metrics_csv: Path, window_s: float = 60.0) -> list[tuple[float, float]]:
    """``(end of window in s, env steps/s in it)`` from the rows of ``metrics.csv``."""
    rows = []
    with open(metrics_csv, newline="") as f:
        for r in csv.DictReader(f):
            try:
                rows.append((float(r["wall_time"]), float(r["env_steps"])))
            except (KeyError, ValueError):
                continue
    out, start = [], 0
    for i, (t, steps) in enumerate(rows):
        if t - rows[start][0] >= window_s:
            out.append((t, (steps - rows[start][1]) / (t - rows[start][0])))
            start = i
    return out


def soak(minutes: float, kill_period_s: float, train_args: list[str], tmp: Path, report: dict[str, Any]) -> bool:
    """Run the soak (module docstring); fill ``report``; True when every target is met.

    Raises:
        BenchError: the run did not start, or ended on its own, or wrote no summary.
    """
    run = tmp / "soak-run"
    cmd = [sys.executable, "-m", "distdqn.cli", "train", "--run-dir", str(run), "--no-progress",
           "--total-env-steps", str(10**12), "--set", "eval.target_return=null",
           "--set", "eval.separate_process=false", *train_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    duration = minutes * 60.0
    warm_up = min(60.0, 0.2 * duration)
    kills, warm, samples = 0, None, []
    try:
        deadline = time.monotonic() + 300
        while not (run / "metrics.csv").exists() or len(run_processes(proc.pid)["actors"]) == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the soak run did not start: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
            time.sleep(0.2)
        t0 = time.monotonic()
        next_kill, next_sample = t0 + kill_period_s, t0
        while (now := time.monotonic()) < t0 + duration:
            if proc.poll() is not None:
                raise BenchError(f"the soak run ended on its own (exit {proc.returncode})")
            if now >= next_sample:
                rss = rss_by_role(proc.pid)
                samples.append((round(now - t0, 1), rss))
                if warm is None and now - t0 >= warm_up:
                    warm = rss
                    say(f"soak: warm-up over at {now - t0:.0f} s: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in rss.items()))
                next_sample = now + SAMPLE_S
            if now >= next_kill:
                actors = run_processes(proc.pid)["actors"]
                if actors:
                    os.kill(actors[kills % len(actors)], signal.SIGKILL)
                    kills += 1
                next_kill = now + kill_period_s
            time.sleep(0.2)
        end = rss_by_role(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    summary_path = run / "summary.json"
    if not summary_path.exists():
        raise BenchError(f"the soak run wrote no summary (exit {proc.returncode}): {err[-2000:]}")
    s = json.loads(summary_path.read_text())
    warm = warm or samples[0][1]
    ratios = {k: end[k] / warm[k] for k in end if k in warm and warm[k] > 0}
    accounting = {k: s[k] for k in ("produced", "inserted", "rejected", "dropped", "accounting_ok", "actor_restarts",
                                    "env_steps", "updates")}
    report.update(minutes=minutes, kill_period_s=kill_period_s, kills=kills, warm_up_s=warm_up,
                  rss_warm_mib=warm, rss_end_mib=end, rss_ratio=ratios, rss_samples=samples,
                  sps_over_time=sps_over_time(run / "metrics.csv", window_s=min(60.0, duration / 6)),
                  accounting=accounting,
                  exit_code=proc.returncode, stop_reason=s["stop_reason"])
    return (all(r <= RSS_TARGET for r in ratios.values()) and s["accounting_ok"] and s["actor_restarts"] == kills
            and proc.returncode == 0)


def render_soak(report: dict[str, Any], met: bool) -> None:
    """Print the soak's figures (module docstring) as plain lines."""
    say(f"soak: {report['minutes']:g} min of apex on the local runtime, an actor SIGKILLed every "
        f"{report['kill_period_s']:g} s ({report['kills']} kills); warm-up {report['warm_up_s']:.0f} s")
    print("process            RSS after warm-up   RSS at end   end / warm-up   (target <= 1.1)")
    for role, ratio in report["rss_ratio"].items():
        print(f"{role:<18} {report['rss_warm_mib'][role]:>10.0f} MiB {report['rss_end_mib'][role]:>9.0f} MiB "
              f"{ratio:>12.3f}  {'met' if ratio <= RSS_TARGET else 'MISSED'}")
    print("env steps/s over time: " + ", ".join(f"{t:.0f} s {v:,.0f}" for t, v in report["sps_over_time"]))
    a = report["accounting"]
    print(f"accounting: produced {a['produced']} = inserted {a['inserted']} + rejected {a['rejected']} + dropped "
          f"{a['dropped']} ({'exact' if a['accounting_ok'] else 'NOT exact'}); actor_restarts {a['actor_restarts']} "
          f"for {report['kills']} kills; env_steps {a['env_steps']}, updates {a['updates']}; "
          f"stop {report['stop_reason']}, exit {report['exit_code']}")
    print(f"soak targets {'met' if met else 'MISSED'}")
