"""Linear layers whose weights can be packed from several checkpoint tensors.

Qwen3 checkpoints store q/k/v and gate/up as separate matrices; running them as one GEMM
each saves launches and reads the activations once. ``PackedLinear`` knows where each
checkpoint tensor goes, so the weight loader stays generic. A tensor-parallel variant would
override ``load_shard`` to keep only its slice of rows (or columns), nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from ember import ops


class Linear(nn.Module):
    """y = x W^T (+ b). Weights are allocated uninitialised: the loader fills them."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)  # a skinny-GEMM kernel at decode, else cuBLAS

    def forward_normed(self, stream: ops.ResidualStream, norm, silu_mul: bool = False):
        """``(self(norm(h)), h)`` for the residual stream h; with ``silu_mul`` (gate and up packed)
        ``silu(gate) * up`` of that instead.

        Where the norm's weight is folded into this one (``fold_norm``), the skinny-GEMM kernel
        runs (decode) and the stream comes summed with its row statistics from ``forward_add``, the
        norm is a per-row scale in the GEMM's epilogue and so is the activation: one launch.
        Elsewhere the norm kernel (with the pending residual add), then the projection. A layer
        whose weights need their own kernel (quantized, say) overrides this with the norm followed
        by its forward.
        """
        return ops.rms_norm_linear(stream, norm.weight, norm.eps, self.weight, self.bias, silu_mul,
                                   norm_folded=norm.folded)

    def fold_norm(self, norm) -> bool:
        """Move the RMSNorm ``norm`` that feeds this projection into its weight's columns (see
        ``ops.fold_norm_weight``). Returns whether it did: a layer that cannot (quantized weights,
        say) returns False and the norm keeps its weight."""
        if norm.folded or not self.weight.dtype.is_floating_point:
            return False
        ops.fold_norm_weight(self.weight, norm.weight)
        norm.folded = True
        return True

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor) -> ops.ResidualStream:
        """The residual stream ``self(x) + residual``: summed in the GEMM's epilogue (with the row
        statistics the next norm needs) where the skinny kernel runs, else left to the next norm."""
        assert self.bias is None, "a residual projection with a bias is not needed by any model yet"
        return ops.linear_add(x, self.weight, residual)

    def shard_rows(self, shard: int | None) -> slice:
        """Rows of ``weight`` that checkpoint shard ``shard`` fills (all of them here)."""
        return slice(0, self.out_features)


class PackedLinear(Linear):
    """Several projections of the same input stacked along the output dimension."""

    def __init__(self, in_features: int, out_sizes: list[int], bias: bool = False):
        super().__init__(in_features, sum(out_sizes), bias)
        self.out_sizes = list(out_sizes)
        self.offsets = [sum(out_sizes[:i]) for i in range(len(out_sizes))]

    def shard_rows(self, shard: int | None) -> slice:
        if shard is None:
            return slice(0, self.out_features)
        return slice(self.offsets[shard], self.offsets[shard] + self.out_sizes[shard])
