"""A :class:`~distdqn.core.Batch` as plain numpy arrays and back: what travels on a pipe
(pickled by the standard library) or through Ray (numpy arrays move without being pickled
one by one)."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from distdqn.core import Batch

RESERVED = ("weights", "keys", "probs")
"""Keys of the encoding that are not item fields (no item spec may use them)."""


def batch_to_numpy(batch: Batch) -> dict[str, Any]:
    """The batch's fields by name, plus ``weights``, ``keys`` and ``probs`` (no copies)."""
    out: dict[str, Any] = {k: t.numpy() for k, t in batch.data.items()}
    out.update(weights=batch.weights.numpy(), keys=batch.keys, probs=batch.probs)
    return out


def batch_from_numpy(d: dict[str, Any]) -> Batch:
    """Inverse of :func:`batch_to_numpy`. The arrays may be read-only views of Ray's object
    store; the learner only reads them (or copies them to its device)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable tensors": never written
        return Batch(data={k: torch.from_numpy(a) for k, a in d.items() if k not in RESERVED},
                     weights=torch.from_numpy(d["weights"]), keys=d["keys"], probs=d.get("probs"))
