"""RMSNorm as a module holding its weight; the arithmetic is in ember.ops.norm."""

from __future__ import annotations

import torch
from torch import nn

from ember import ops


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(size), requires_grad=False)
        # True once the weight has moved into the next projection (``Linear.fold_norm``); it is
        # then all ones, so this module alone computes the unit-weight norm.
        self.folded = False

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """rms_norm(x), or with ``residual``: (rms_norm(x + residual), x + residual)."""
        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps)
        return ops.add_rms_norm(x, residual, self.weight, self.eps)
