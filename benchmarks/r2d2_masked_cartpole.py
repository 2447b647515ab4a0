"""R2D2 against feed-forward Ape-X on velocity-masked CartPole (observation [x, theta]).

Each run is ``distdqn train`` (local runtime) with an env-step budget, never a wall-clock
limit. R2D2 runs ``configs/cartpole-masked-r2d2.yaml`` (target: greedy eval >= 400 over
10 episodes within 500k env steps); apex runs its preset on the same env and budget,
without a target (bar: it stays below 150). Prints, per run, the env steps and wall time
to the target, the best and the final eval return.

    python benchmarks/r2d2_masked_cartpole.py [--seeds 0,1,2] [--budget 500000] [--skip-apex]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = "distdqn/CartPoleMasked-v0"
R2D2_TARGET, APEX_BAR = 400.0, 150.0


def train(run: Path, args: list[str]) -> dict:
    """One ``distdqn train`` run; its summary plus the best logged eval return."""
    cmd = [sys.executable, "-m", "distdqn.cli", "train", "--no-progress", "--run-dir", str(run), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        evals = [float(r["eval_return"]) for r in csv.DictReader(f) if r.get("eval_return")]
    summary["best_eval_return"] = max(evals + [summary.get("final_eval_return") or float("-inf")])
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budget", type=int, default=500_000, help="env steps per run")
    p.add_argument("--skip-apex", action="store_true")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="distdqn-r2d2-") as tmp:
        for s in seeds:
            got = train(Path(tmp) / f"r2d2-{s}", ["--config", "configs/cartpole-masked-r2d2.yaml", "--seed", str(s),
                                                  "--total-env-steps", str(a.budget)])
            rows.append(("r2d2", s, got, got["solved"]))
            print(f"r2d2 seed {s}: solved={got['solved']} at {got['solved_at_env_steps']} env steps "
                  f"({got['solved_at_wall_time_s'] or float('nan'):.1f} s); best eval {got['best_eval_return']:.1f}, "
                  f"final {got['final_eval_return']:.1f}; {got['env_steps']:,} env steps, {got['wall_time_s']:.1f} s",
                  flush=True)
        if not a.skip_apex:
            got = train(Path(tmp) / "apex", ["--env", ENV, "--seed", str(seeds[0]), "--total-env-steps",
                                             str(a.budget), "--set", "eval.eval_period=10000", "--set",
                                             "eval.eval_episodes=10", "--set", "eval.target_return=null"])
            rows.append(("apex", seeds[0], got, got["best_eval_return"] < APEX_BAR))
            print(f"apex seed {seeds[0]}: best eval {got['best_eval_return']:.1f}, final "
                  f"{got['final_eval_return']:.1f} (bar < {APEX_BAR:g}); {got['wall_time_s']:.1f} s", flush=True)
    ok = all(met for *_, met in rows)
    print(f"targets: r2d2 >= {R2D2_TARGET:g} within {a.budget:,} env steps for every seed; apex < {APEX_BAR:g}: "
          + ("met" if ok else "MISSED"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
