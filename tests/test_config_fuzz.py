"""Config fuzzing: a config drawn at random either validates and runs 500 serial env steps,
or is refused with a one-line error that names a config key. Never a traceback, never a
hang (each draw runs under an alarm)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import signal
import typing
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distdqn import cli
from distdqn.config import ExperimentConfig

SKIP = {"runtime", "total_env_steps", "progress", "log_period", "env.id", "env.imports", "env.kwargs",
        "env.envpool_threads"}
"""Keys the draw leaves alone: the command line fixes them (a short serial run on
CartPole-v1), or they only matter to other runtimes and backends."""
ALARM_S = 120


def _fields(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> its type annotation, for every leaf of the config schema."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out.update(_fields(t, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = t
    return out


KEYS = _fields(ExperimentConfig)

SMALL_INTS = [-1, 0, 1, 2, 3, 7, 64]
"""Small enough that no draw builds thousands of envs or a huge replay (a run must stay short)."""
FLOATS = [-1.0, 0.0, 1e-3, 0.5, 1.0, 2.0, 16.0, math.nan, math.inf]


def _values(t: Any) -> st.SearchStrategy:
    """Values for a key of type ``t``: mostly of its type (valid or not), sometimes of another."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    wrong = st.sampled_from(["bogus", [1, 2], {"a": 1}])
    if origin is typing.Literal:
        return st.sampled_from([*args, "bogus"])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return st.one_of(st.none(), *[_values(a) for a in inner])
    if t is bool:
        return st.one_of(st.booleans(), st.sampled_from(["yes", 2]))
    if t is int:
        return st.one_of(st.sampled_from(SMALL_INTS), st.sampled_from([1.5, "ten"]))
    if t is float:
        return st.one_of(st.sampled_from(FLOATS), wrong)
    if origin is tuple:
        return st.one_of(st.lists(st.sampled_from([0, 1, 8, 16]), max_size=3), wrong)
    return wrong


@st.composite
def configs(draw) -> tuple[dict[str, Any], list[str]]:
    """Nested config data with 1 to 4 keys drawn (sometimes an unknown one)."""
    keys = draw(st.lists(st.sampled_from(sorted(set(KEYS) - SKIP)), min_size=1, max_size=4, unique=True))
    if draw(st.integers(0, 9)) == 0:
        keys.append(draw(st.sampled_from(["no_such_key", "learner.no_such_key", "replay.capacityy"])))
    data: dict[str, Any] = {}
    for key in keys:
        value = draw(_values(KEYS[key])) if key in KEYS else 1
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if isinstance(node, dict):
            node[last] = value
    return data, keys


class _Hang(Exception):
    pass


def _alarm(*_: Any) -> None:
    raise _Hang(f"a drawn config ran past {ALARM_S} s")


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(drawn=configs())
def test_a_drawn_config_runs_or_is_refused_naming_a_key(tmp_path_factory, capsys, drawn):
    data, keys = drawn
    tmp = tmp_path_factory.mktemp("fuzz")
    cfg_file = tmp / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    run = tmp / "run"
    capsys.readouterr()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(ALARM_S)
    try:
        rc = cli.main(["train", "--config", str(cfg_file), "--runtime", "serial", "--total-env-steps", "500",
                       "--no-progress", "--run-dir", str(run)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("distdqn: error:")]
    assert "Traceback" not in err, (data, err)
    if rc == 0:
        s = json.loads((run / "summary.json").read_text())
        assert s["env_steps"] >= 500 and s["accounting_ok"], data
    elif rc == 2:  # refused before anything started: one line naming a key
        assert len(lines) == 1, (data, err)
        named = re.match(r"distdqn: error: invalid config: ([\w.]+)=", lines[0])
        assert named and (named[1] in KEYS or named[1] in keys), (data, lines[0])
        assert not (run / "summary.json").exists()
    else:  # the run started and failed (e.g. a non-finite loss): one line, and its summary
        assert rc == 1 and len(lines) == 1, (rc, data, err)
        assert Path(run / "summary.json").exists(), data
