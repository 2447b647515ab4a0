"""Typed, frozen experiment configuration (:mod:`~distdqn.config.schema`), its validation
(:mod:`~distdqn.config.validate`) and loading (:mod:`~distdqn.config.loader`).

Every invalid value raises :class:`ConfigError` naming the dotted key, the value and what is
allowed, before any process starts. Configs are loaded from YAML (:func:`load_yaml`),
overridden with ``key=value`` strings (:func:`apply_overrides`) and written back out
resolved (:func:`to_dict`).
"""

from distdqn.config.errors import ConfigError
from distdqn.config.loader import (
    apply_overrides,
    from_dict,
    load_yaml,
    replace,
    to_dict,
)
from distdqn.config.presets import AGENT_TOPOLOGIES, PRESETS, TOPOLOGY_DEFAULTS, Preset
from distdqn.config.schema import (
    ActorConfig,
    ActorCriticConfig,
    EnvConfig,
    EvalConfig,
    ExperimentConfig,
    InferenceConfig,
    LearnerConfig,
    NetworkConfig,
    ParameterServerConfig,
    R2D2Config,
    RayConfig,
    ReplayConfig,
)
from distdqn.config.validate import error_buffer, inference_batch, sample_unit, validate

__all__ = [
    "AGENT_TOPOLOGIES",
    "PRESETS",
    "TOPOLOGY_DEFAULTS",
    "ActorConfig",
    "ActorCriticConfig",
    "ConfigError",
    "EnvConfig",
    "EvalConfig",
    "ExperimentConfig",
    "InferenceConfig",
    "LearnerConfig",
    "NetworkConfig",
    "ParameterServerConfig",
    "R2D2Config",
    "Preset",
    "RayConfig",
    "ReplayConfig",
    "apply_overrides",
    "error_buffer",
    "from_dict",
    "load_yaml",
    "replace",
    "inference_batch",
    "sample_unit",
    "to_dict",
    "validate",
]
