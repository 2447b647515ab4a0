"""Throughput of the three topologies, measured in one run on this machine.

Prints:

1. The parameter server's gradient-apply rate (``ParameterServer.apply_gradients``: copy
   in, staleness check, optimizer step, version bump, target bookkeeping) against a bare
   ``optimizer.step()`` loop over the same network's parameters with the same gradient
   already in ``.grad``: the ceiling. Target ratio >= 0.8.
2. Aggregate learner updates/s of the local runtime with 1 and 2 learners for apex,
   gorila, sync allreduce and sync average on CartPole-v1,
   with ``samples_per_insert=64`` (actors throttled to one new transition per sampled
   one, so the learners are the bottleneck), steady state from ``metrics.csv``, plus the
   mean staleness of gorila's gradients. On a 2-core machine the learner processes share
   two cores with the actors and the learner-side process, so two learners cannot
   double the rate; the table shows the scaling shape.

    python benchmarks/topologies.py [--env-steps 4000] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distdqn.config import from_dict
from distdqn.program import build_network, build_parameter_server, spaces_for


def ps_apply_rate(seconds: float = 1.0) -> dict[str, float]:
    torch.set_num_threads(1)
    cfg = from_dict({"preset": "gorila"})
    spaces = spaces_for(cfg)
    ps = build_parameter_server(cfg, spaces)
    rng = np.random.default_rng(0)
    grads = rng.normal(size=ps.num_params).astype(np.float32) * 1e-3
    # ceiling: bare optimizer.step on an identical network, gradient already in place
    net = build_network(cfg, spaces)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learner.learning_rate, eps=cfg.learner.adam_epsilon)
    g = torch.from_numpy(grads)
    off = 0
    for p in net.parameters():
        p.grad = g[off: off + p.numel()].view_as(p).clone()
        off += p.numel()

    def rate(fn) -> float:
        for _ in range(50):
            fn()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(100):
                fn()
            n += 100
        return n / (time.perf_counter() - t0)

    # interleaved rounds, medians: load changes hit both sides alike
    bare_r, served_r = [], []
    for _ in range(5):
        bare_r.append(rate(opt.step))
        served_r.append(rate(lambda: ps.apply_gradients(grads, ps.version)))
    bare, served = float(np.median(bare_r)), float(np.median(served_r))
    return {"ps_apply_per_s": served, "bare_optimizer_step_per_s": bare, "ratio": served / bare}


def learner_ups(preset: str, learners: int, env_steps: int, sync_mode: str = "allreduce") -> dict[str, float]:
    from distdqn.runtime.local import run_local

    # A high replay ratio throttles the actors (one new transition per sampled one): the
    # learners are the bottleneck, fed from the replay, with the actors nearly idle.
    data = {"preset": preset, "seed": 0, "total_env_steps": env_steps, "progress": False, "log_period": 0.5,
            "replay": {"samples_per_insert": 64, "min_replay_size": 1000},
            "learner": {"num_learners": learners, "sync_mode": sync_mode},
            "eval": {"eval_period": 0, "eval_episodes": 1, "target_return": None}}
    cfg = from_dict(data)
    with tempfile.TemporaryDirectory() as d:
        s = run_local(cfg, spaces_for(cfg), Path(d))
        rows = list(csv.DictReader(open(Path(d) / "metrics.csv")))
    # steady state: rows after the replay filled and the first third of the run
    ups = [float(r["ups"]) for r in rows[len(rows) // 3:] if r["ups"] and int(r["updates"]) > 0]
    steady = float(np.median(ups)) if ups else s["ups"]
    per_step = learners if preset == "sync" else 1
    return {"ups": steady, "learner_updates_per_s": steady * per_step, "run_ups": s["ups"], "sps": s["sps"],
            "staleness_mean": s.get("staleness_mean"), "dropped_stale_gradients": s.get("dropped_stale_gradients")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env-steps", type=int, default=4_000)
    ap.add_argument("--json")
    args = ap.parse_args()
    out: dict[str, object] = {"ps": ps_apply_rate()}
    p = out["ps"]
    print(f"parameter server apply_gradients: {p['ps_apply_per_s']:.0f}/s vs bare optimizer.step "
          f"{p['bare_optimizer_step_per_s']:.0f}/s -> ratio {p['ratio']:.2f} (target >= 0.8)")
    rows = []
    for preset, m, mode in [("apex", 1, "allreduce"), ("gorila", 1, "allreduce"), ("gorila", 2, "allreduce"),
                            ("sync", 1, "allreduce"), ("sync", 2, "allreduce"),
                            ("sync", 1, "average"), ("sync", 2, "average")]:
        r = learner_ups(preset, m, args.env_steps, mode)
        name = preset if preset != "sync" else f"sync/{mode}"
        rows.append({"topology": name, "learners": m, **r})
        st = "" if r["staleness_mean"] is None else f"  staleness_mean {r['staleness_mean']:.2f}" \
                                                     f"  dropped {r['dropped_stale_gradients']}"
        print(f"{name:16s} learners={m}  steps/s {r['ups']:7.1f}  learner updates/s {r['learner_updates_per_s']:7.1f}"
              f"  env sps {r['sps']:7.0f}{st}", flush=True)
    out["learners"] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
