"""Helpers shared by the test modules."""

from __future__ import annotations

import copy
import io
from typing import Any

import torch

from distdqn.config import ExperimentConfig, from_dict


def config_with(base: dict[str, Any], **dotted: Any) -> ExperimentConfig:
    """``base`` (nested config data) with ``section.key=value`` changes, validated."""
    data = copy.deepcopy(base)
    for key, value in dotted.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return from_dict(data)


def torch_roundtrip(obj: Any) -> Any:
    """``obj`` saved with ``torch.save`` and loaded back with ``weights_only=True`` (what a
    checkpoint goes through)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)
