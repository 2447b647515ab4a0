"""Building configs: nested plain data (YAML, ``--set key=value``) -> a validated
:class:`~distdqn.config.schema.ExperimentConfig`, and back (:func:`to_dict`)."""

from __future__ import annotations

import copy
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from distdqn.config.errors import ConfigError
from distdqn.config.presets import AGENT_DEFAULTS, PRESETS, TOPOLOGY_DEFAULTS
from distdqn.config.schema import ExperimentConfig


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's type, raising ConfigError if impossible."""
    origin = get_origin(hint)
    args = get_args(hint)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(key, value, f"a mapping of {hint.__name__} fields")
        return _build(hint, value, key + ".")
    if origin is Literal:
        if isinstance(value, bool) and str(value).lower() in args:
            return str(value).lower()  # YAML reads `true` as a bool; the literal spells it
        return value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, "a mapping")
        return {str(k): v for k, v in value.items()}
    if origin in (tuple, list) or hint in (tuple, list):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, "a list")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, key) for v in value)
    if args and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(key, value, "true or false")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(key, value, "an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
        if isinstance(value, int):
            return value
        raise ConfigError(key, value, "an integer")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(key, value, "a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, value, "a number") from None
    if hint is str:
        return str(value)
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(prefix + k, v, "one of the keys " + ", ".join(sorted(names)))
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    # Nested sections are validated as part of the whole experiment.
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from nested plain data.

    The preset named by ``data["preset"]`` (default ``apex``) names the agent and the
    topology unless ``data`` gives them; the agent's defaults
    (:data:`~distdqn.config.presets.AGENT_DEFAULTS`), then the topology's
    (:data:`~distdqn.config.presets.TOPOLOGY_DEFAULTS`), then the preset's overrides, then
    ``data`` make the values. Run directories that name only a preset resolve as before.
    Raises :class:`ConfigError`.
    """
    preset = data.get("preset", "apex")
    if preset not in PRESETS:
        raise ConfigError("preset", preset, "one of " + ", ".join(PRESETS))
    p = PRESETS[preset]
    chosen = {"agent": data.get("agent", p.agent), "topology": data.get("topology", p.topology)}
    base = _deep_merge(AGENT_DEFAULTS.get(chosen["agent"], {}), TOPOLOGY_DEFAULTS.get(chosen["topology"], {}))
    base = _deep_merge(base, p.overrides)
    return _build(ExperimentConfig, _deep_merge(_deep_merge(base, data), chosen))


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain YAML-able data (tuples become lists)."""

    def conv(v: Any) -> Any:
        if is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping. Raises :class:`ConfigError` if the file is missing or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("--config", str(p), "an existing YAML file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("--config", str(p), f"valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError("--config", str(p), "a YAML mapping of config keys")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML scalars/lists) to nested data."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", item, "key=value, e.g. replay.capacity=50000")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {}
                node[p] = child
            node = child
        node[parts[-1]] = value
    return out


def replace(cfg: ExperimentConfig, **changes: Any) -> ExperimentConfig:
    """A validated copy with dotted-key changes: ``replace(cfg, **{"replay.capacity": 10})``."""
    data = to_dict(cfg)
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return from_dict(data)


