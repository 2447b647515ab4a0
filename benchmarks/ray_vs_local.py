"""The Ray runtime against the local runtime, in one run on this machine.

For the same preset and config (CartPole-v1 by default, evaluation off, a fixed env-step
budget) it trains once with ``runtime: local`` and once with ``runtime: ray`` (a private
Ray instance started by the run) and prints:

- steady-state env steps/s and updates/s of each (from ``metrics.csv``, start-up and
  shutdown excluded) and the ratio ray / local (target >= 0.7);
- Ray's start-up time (``ray.init`` until it returns, in the run's ``summary.json``);
- the peak resident memory (RSS) of the whole process tree of each run (this process and
  all its descendants: actors, learners, and for Ray its raylet, GCS and workers),
  sampled every 0.2 s from ``/proc`` (Linux).

Two phases per runtime: ``collect`` (``samples_per_insert=0``: actors as fast as they
go, the learner keeps up as it can) and ``learn`` (the default ``samples_per_insert``,
so the rate limiter ties collection to learning). Each phase runs ``--rounds`` rounds of
local then ray, so that slow drifts of the machine's speed hit both; the ratio is that of
the means. The collect phase runs ``--collect-factor`` times the env steps of the learn
phase, so that its steady-state window lasts about as long.

    python benchmarks/ray_vs_local.py [--preset apex] [--env-steps 60000] [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from distdqn.bench import steady_state
from distdqn.config import from_dict
from distdqn.program import spaces_for

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants, from ``/proc`` (Linux)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/statm") as f:
                resident = int(f.read().split()[1])
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        pid = int(entry)
        children.setdefault(ppid, []).append(pid)
        rss[pid] = resident * PAGE
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


class PeakRSS:
    """Samples :func:`tree_rss_bytes` of this process in a thread; ``peak`` in bytes."""

    def __init__(self, period: float = 0.2):
        self.peak, self.period = 0, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()))
            self._stop.wait(self.period)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def run_once(runtime: str, preset: str, env_steps: int, spi: float | None, work: Path) -> dict[str, Any]:
    data: dict[str, Any] = {"preset": preset, "runtime": runtime, "total_env_steps": env_steps, "progress": False,
                            "eval": {"eval_period": 0, "target_return": None, "eval_episodes": 1},
                            "log_period": 0.5, "checkpoint_period": 0}
    if spi is not None:
        data["replay"] = {"samples_per_insert": spi}
    cfg = from_dict(data)
    spaces = spaces_for(cfg)
    run_dir = work / f"{runtime}-{preset}-{'collect' if spi == 0 else 'learn'}"
    run_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        if runtime == "ray":
            from distdqn.runtime.ray import run_ray

            summary = run_ray(cfg, spaces, run_dir)
        else:
            from distdqn.runtime.local import run_local

            summary = run_local(cfg, spaces, run_dir)
    wall = time.perf_counter() - t0
    steady = steady_state(run_dir, warm_env_steps=min(5000, env_steps // 4))
    return {"runtime": runtime, "wall_s": wall, "sps": steady.sps if steady else summary["sps"],
            "ups": steady.ups if steady else summary["ups"], "steady": asdict(steady) if steady else None,
            "peak_rss_gb": mem.peak / 1e9, "ray_startup_s": summary.get("ray_startup_s"),
            "accounting_ok": summary["accounting_ok"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="apex", choices=["apex", "gorila"])
    ap.add_argument("--env-steps", type=int, default=60_000, help="env steps per learn-phase run")
    ap.add_argument("--collect-factor", type=int, default=5, help="collect-phase runs take this many times more")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    rounds: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="distdqn-rayvslocal-") as tmp:
        for phase, spi in (("collect", 0.0), ("learn", None)):
            steps = args.env_steps * (args.collect_factor if phase == "collect" else 1)
            for k in range(args.rounds):
                for runtime in ("local", "ray"):
                    work = Path(tmp) / f"round{k}"
                    work.mkdir(exist_ok=True)
                    rounds.setdefault(f"{phase}/{runtime}", []).append(run_once(runtime, args.preset, steps, spi, work))
    for key, runs in rounds.items():
        results[key] = {"runtime": runs[0]["runtime"], "rounds": runs,
                        **{m: sum(r[m] for r in runs) / len(runs) for m in ("sps", "ups", "wall_s")},
                        "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
                        "ray_startup_s": (None if runs[0]["ray_startup_s"] is None
                                          else sum(r["ray_startup_s"] for r in runs) / len(runs)),
                        "accounting_ok": all(r["accounting_ok"] for r in runs)}
    print(f"\npreset {args.preset}, CartPole-v1, {args.env_steps} env steps per learn run ({args.collect_factor}x per "
          f"collect run), {args.rounds} rounds of local then ray, evaluation off; figures are means over the rounds")
    print(f"{'phase':8} {'runtime':8} {'sps':>8} {'ups':>7} {'peak RSS':>9} {'ray start':>9}  ratio ray/local")
    for phase in ("collect", "learn"):
        loc, ray_ = results[f"{phase}/local"], results[f"{phase}/ray"]
        for r in (loc, ray_):
            start = "" if r["ray_startup_s"] is None else f"{r['ray_startup_s']:.1f} s"
            print(f"{phase:8} {r['runtime']:8} {r['sps']:8.0f} {r['ups']:7.0f} {r['peak_rss_gb']:7.2f} GB {start:>9}")
        rs, ru = ray_["sps"] / max(loc["sps"], 1e-9), ray_["ups"] / max(loc["ups"], 1e-9)
        key = "sps" if phase == "collect" else "ups"
        ratio = rs if key == "sps" else ru
        per = ", ".join(f"{r[key] / max(lr[key], 1e-9):.2f}" for lr, r in zip(loc["rounds"], ray_["rounds"]))
        print(f"{'':8} {'ratio':8} {rs:8.2f} {ru:7.2f}   target {key} >= 0.7: {'MET' if ratio >= 0.7 else 'MISS'} "
              f"(per round {per})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
