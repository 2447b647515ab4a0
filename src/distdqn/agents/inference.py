"""Acting through a TorchScript trace of a network (any agent's)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)


def trace_for_inference(network: nn.Module, example_obs: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``network`` as a TorchScript trace for acting (``torch.jit.trace``): the same
    function, the same parameter tensors (so in-place loads such as
    :func:`distdqn.core.load_flat_params` reach it), without eager PyTorch's per-operator
    Python overhead, which dominates small networks at small batches on CPU (the default
    MLP at batch 4 takes about half the time). Any batch size works.

    Args:
        network: a network in eval mode; called under ``torch.inference_mode``.
        example_obs: one batch ``[B, *obs_shape]`` of the observations it will see.

    Returns the traced module, or ``network`` itself when tracing fails (logged).
    """
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape arithmetic, harmless here
            return torch.jit.trace(network, example_obs, check_trace=False)
    except Exception as exc:  # noqa: BLE001 - any network that cannot be traced still works eagerly
        log.warning("could not trace the network for acting (%s); acting with the eager network", exc)
        return network
