"""``distdqn check-env``: what distdqn makes of an environment, before a run."""

from __future__ import annotations

import re
import warnings

import numpy as np

from distdqn.config import ExperimentConfig
from distdqn.envs.spec import is_atari
from distdqn.envs.user import construct, resolve


def _env_checker(cfg: ExperimentConfig) -> list[str]:
    """Gymnasium's env checker on the env as its id builds it (before distdqn's wrappers):
    its warnings and, if it failed, the failure."""
    from gymnasium.utils.env_checker import check_env

    kind, maker = resolve(cfg.env)
    env = construct(cfg.env, maker, dict(cfg.env.kwargs))
    out: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped, skip_render_check=True)
        out += [f"warning: {re.sub(chr(27) + r'[[][0-9;]*m', '', str(w.message))}" for w in caught]
    except Exception as exc:  # noqa: BLE001 - the checker's verdict, reported as such
        out.append(f"FAILED: {type(exc).__name__}: {exc}")
    finally:
        env.close()
    return out


def describe(cfg: ExperimentConfig) -> tuple[list[str], bool]:
    """The lines ``check-env`` prints, and whether the env checker failed.

    Raises:
        EnvSpecError, ConfigError: the env cannot be made or used (as ``distdqn train``
            would refuse it).
    """
    from distdqn.envs.make import make_env
    from distdqn.program import (
        build_agent,
        build_network,
        frame_dedup_enabled,
        spaces_for,
    )

    spaces = spaces_for(cfg)
    env = make_env(cfg.env)
    raw_obs, act = env.unwrapped.observation_space, env.action_space
    env.close()
    agent = build_agent(cfg, spaces)
    net = build_network(cfg, spaces)
    params = sum(p.numel() for p in net.parameters())
    dedup = frame_dedup_enabled(cfg, spaces)
    spec = agent.item_spec(dedup)
    per: dict[str, int] = {name: int(np.prod(f.shape, dtype=np.int64)) * f.np_dtype.itemsize
                           for name, f in spec.items()}
    lines = [
        f"env: {cfg.env.id}" + (f" (imports {', '.join(cfg.env.imports)})" if cfg.env.imports else "")
        + (f", kwargs {dict(cfg.env.kwargs)}" if cfg.env.kwargs else ""),
        f"observation space: {raw_obs}",
        f"observations as distdqn takes them: {spaces.obs_dtype} {spaces.obs_shape}",
        f"action space: {act}",
        f"network: {agent.network_kind()}" + (" (dueling)" if getattr(net, "head", None) is not None
                                               and getattr(net.head, "dueling", False) else "")
        + f", {params:,} parameters",
    ]
    if dedup:
        frame = int(np.prod(spaces.obs_shape[1:])) * np.dtype(spaces.obs_dtype).itemsize
        rest = sum(v for k, v in per.items() if spec[k].frames is None)
        lines.append(f"replay: about {frame + rest + 24:,} bytes per transition with frame deduplication "
                     f"(one {'x'.join(map(str, spaces.obs_shape[1:]))} frame, {rest + 24} for the rest)")
    else:
        parts = ", ".join(f"{k} {v}" for k, v in per.items())
        lines.append(f"replay: {sum(per.values()):,} bytes per transition ({parts})")
    problems = False
    if not is_atari(cfg.env.id):
        checked = _env_checker(cfg)
        problems = any(c.startswith("FAILED") for c in checked)
        lines.append("gymnasium env checker: " + ("passed" if not checked else "see below"))
        lines += [f"  {c}" for c in checked]
    return lines, problems


