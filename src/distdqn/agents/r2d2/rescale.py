"""The invertible value rescaling of R2D2 (Pohlen et al. 2018, "Observe and Look Further",
sec. 3.2 and Prop. A.2; Kapturowski et al. 2019, sec. 2.3):

    h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x,
    h^-1(x) = sign(x) (((sqrt(1 + 4 eps (|x| + 1 + eps)) - 1) / (2 eps))^2 - 1).

Both act elementwise on float tensors (any shape, dtype kept).
"""

from __future__ import annotations

import torch

EPS = 1e-3


def h(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """h(x) (module docstring)."""
    return torch.sign(x) * (torch.sqrt(torch.abs(x) + 1.0) - 1.0) + eps * x


def h_inv(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The exact inverse of :func:`h` (Pohlen et al. 2018, Prop. A.2)."""
    root = (torch.sqrt(1.0 + 4.0 * eps * (torch.abs(x) + 1.0 + eps)) - 1.0) / (2.0 * eps)
    return torch.sign(x) * (root * root - 1.0)
