"""Learner update rate on this machine's learner device (``learner.device``): ``Learner.learn``
against the bench's bare PyTorch update loop (``distdqn.bench.BareUpdate``: per-tensor
torch.optim, batches already on the device). The learner takes CPU batches as the replay
gives them, so its figure includes the host-to-device copies on a GPU. The two loops
alternate in rounds in one process. Row (b) of ``distdqn bench`` measures the learner
with its replay; this isolates the update, e.g. to compare devices or batch sizes.

    python benchmarks/learner_update.py [--config configs/pong.yaml] [--set learner.batch_size=64]
        [--seconds 2] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from distdqn.agents.dqn.spec import transition_batch
from distdqn.bench import BareUpdate, random_transitions, timed
from distdqn.config import apply_overrides, from_dict, load_yaml
from distdqn.core import Batch
from distdqn.program import build_learner, learner_device, spaces_for


def cpu_batches(cfg, spaces, n: int = 8) -> list[Batch]:
    rng = np.random.default_rng([cfg.seed, 21])
    out = []
    for _ in range(n):
        d = random_transitions(spaces, cfg.learner.batch_size, rng, cfg.learner.gamma ** cfg.actor.n_step)
        out.append(transition_batch(obs=torch.from_numpy(d["obs"]), action=torch.from_numpy(d["action"]),
                                reward=torch.from_numpy(d["reward"]), discount=torch.from_numpy(d["discount"]),
                                next_obs=torch.from_numpy(d["next_obs"]),
                                weights=torch.from_numpy(rng.uniform(0.3, 1.0, cfg.learner.batch_size).astype(np.float32)),
                                keys=np.arange(cfg.learner.batch_size)))
    return out


def rate(step, sync, seconds: float) -> float:
    """Calls per second after 5 warm-up calls (device work waited for at both ends)."""
    for _ in range(5):
        step()
    sync()
    calls, elapsed = timed(step, seconds, sync)
    return calls / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    cfg = from_dict(apply_overrides(load_yaml(a.config) if a.config else {}, a.set))
    torch.set_num_threads(cfg.learner.torch_threads)
    spaces = spaces_for(cfg)
    device = learner_device(cfg, spaces)
    batches = cpu_batches(cfg, spaces)
    loops = {"bare": BareUpdate(cfg, spaces, device)}
    learner = build_learner(cfg, spaces)
    it = iter(range(1 << 62))
    loops["learner"] = lambda: learner.learn(batches[next(it) % len(batches)])
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    results: dict[str, list[float]] = {k: [] for k in loops}
    for _ in range(a.rounds):
        for name, step in loops.items():
            results[name].append(rate(step, sync, a.seconds))
    net = cfg.network.kind if cfg.network.kind != "auto" else ("nature_cnn" if len(spaces.obs_shape) == 3 else "mlp")
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, {cfg.env.id}, {net}, batch {cfg.learner.batch_size}, "
          f"{cfg.learner.torch_threads} torch thread(s); updates/s, median of {a.rounds} rounds of {a.seconds:g} s")
    med = {k: float(np.median(v)) for k, v in results.items()}
    for name, v in med.items():
        print(f"  {name:8s} {v:9.1f} updates/s  ({1e3 / v:.3f} ms)  ratio to bare {v / med['bare']:.2f}  "
              f"rounds {', '.join(f'{x:.0f}' for x in results[name])}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": str(device), "env": cfg.env.id, "batch_size": cfg.learner.batch_size,
                       "updates_per_s": med, "rounds": results}, f, indent=1)


if __name__ == "__main__":
    main()
