"""Projections: ``ops.linear`` and its fused forms, on the skinny GEMM at decode (ops/skinny_gemm.py).

``linear(x, weight, bias=None)``: x [M, K], weight [N, K] (row-major) -> [M, N] in x's dtype.

The decoder layer's other work rides along in the same launch, so that a decode layer is its
projections and its attention and little else (each extra launch costs ~1-2 us of latency):
``linear_add(x, weight, residual)`` adds the residual in the epilogue and stores, per column
block, each row's sum of squares of the result, the one statistic the next RMSNorm needs
(a ``ResidualStream``); ``rms_norm_linear(stream, norm_weight, eps, weight, norm_folded=True)``
then runs the next RMSNorm with no pass over x at all: ``fold_norm_weight`` has moved the norm's
weight into W's columns at load time, so rms_norm(x) W^T is the plain product scaled per row by
1 / rms(x), which those partial sums give in the epilogue. With ``silu_mul=True`` (W = [gate; up])
it computes ``silu(g) * u`` in the epilogue too, so the MLP's activation needs neither a kernel
nor the [M, 2 I] intermediate; ``linear_silu_mul`` is that epilogue without the norm.

Roundings: the add, silu and the products round to the dtype as the unfused ops do. The folded
norm rounds differently from HF's (which rounds x / rms and then its product with the weight,
where the fold rounds W * g once and never rounds the normalised x), an error of the same size,
which the GPU tests judge against HF's own bf16 error; in float32 both are exact to ~1e-7. Where
a fused form cannot run (a shape the table hands to cuBLAS, no statistics), the ops fall back to
the unfused kernels and leave the residual add to the next norm (``ops.add_rms_norm`` adds and
normalises in one kernel): no extra launch either way.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ember.ops.activation import silu_mul, silu_mul_reference
from ember.ops.dispatch import use_triton
from ember.ops.norm import add_rms_norm, add_rms_norm_reference, rms_norm, rms_norm_reference
from ember.ops.skinny_gemm import (  # noqa: F401 -- the tuning names are re-exported for tests and sweeps
    _HEURISTIC_MAX_M,
    _WORKSPACE_FLOATS,
    OPS,
    SKINNY_MAX_M,
    SKINNY_TABLE,
    SkinnyConfig,
    _heuristic_config,
    _launch,
    _workspaces,
    skinny_config,
)


class ResidualStream(NamedTuple):
    """The decoder's residual stream, ``hidden + residual``.

    After a fused ADD epilogue (``linear_add``) the sum is done: ``residual`` is None and
    ``row_stats`` [blocks, M] (fp32) holds, per column block of the producing GEMM, the sums of
    squares of the sum's rows, which is all the next RMSNorm needs. After the unfused path the add
    is left to the next norm (``ops.add_rms_norm`` does add + norm in one kernel).
    """

    hidden: torch.Tensor
    residual: torch.Tensor | None = None
    row_stats: torch.Tensor | None = None


def _eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the skinny kernel can run this product at all."""
    return (use_triton(x) and x.dim() == 2 and x.is_contiguous() and 1 <= x.shape[0] <= SKINNY_MAX_M
            and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype
            and weight.device == x.device and weight.dim() == 2 and weight.stride(1) == 1
            and weight.shape[1] == x.shape[1] > 0
            and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous())))


def _config(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, op: str) -> SkinnyConfig | None:
    """The config to run ``op`` with, or None where the kernel can't or shouldn't run."""
    return skinny_config(x.shape[0], weight.shape[0], weight.shape[1], op) if _eligible(x, weight, bias) else None


# ---------------------------------------------------------------------------------------- ops
def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  config: SkinnyConfig | None = None) -> torch.Tensor:
    config = config or skinny_config(x.shape[0], weight.shape[0], x.shape[1]) or _heuristic_config(
        x.shape[0], weight.shape[0], x.shape[1])
    return _launch(x, weight, bias, config)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + b: the skinny kernel at decode where the table (or the heuristic) says so, else cuBLAS."""
    config = _config(x, weight, bias, "linear")
    return F.linear(x, weight, bias) if config is None else _launch(x, weight, bias, config)


def lm_head_reference(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight) if out is None else torch.mm(x, weight.t(), out=out)


def lm_head_triton(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None,
                   config: SkinnyConfig | None = None) -> torch.Tensor:
    m, n, k = x.shape[0], weight.shape[0], x.shape[1]
    config = config or skinny_config(m, n, k, "lm_head") or _heuristic_config(m, n, k)
    return _launch(x, weight, None, config, out=out)


def lm_head(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Logits x W^T in x's dtype (W: [vocab, hidden]), into ``out`` ([M, vocab], rows contiguous)
    when given. The skinny kernel where the table has an "lm_head" entry for the shape (decode at
    batch 1: cuBLAS puts a memset node before its GEMM there, which takes no part in PDL), else
    cuBLAS."""
    config = _config(x, weight, None, "lm_head")
    return lm_head_reference(x, weight, out) if config is None else lm_head_triton(x, weight, out, config)


def linear_silu_mul_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """silu(x W_gate^T) * (x W_up^T) for W = [gate; up], each step rounded to the dtype."""
    return silu_mul_reference(F.linear(x, weight))


def linear_silu_mul_triton(x: torch.Tensor, weight: torch.Tensor, config: SkinnyConfig | None = None) -> torch.Tensor:
    m, n, k = x.shape[0], weight.shape[0], x.shape[1]
    config = config or skinny_config(m, n, k, "gate_silu") or _heuristic_config(m, n, k)
    return _launch(x, weight, None, config, gate_silu=True)


def linear_silu_mul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    config = _config(x, weight, None, "gate_silu")
    return silu_mul(linear(x, weight)) if config is None else _launch(x, weight, None, config, gate_silu=True)


def linear_add_reference(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> ResidualStream:
    """The stream ``x W^T + residual`` (the product rounded, then the sum), summed, with its row
    statistics as one block."""
    hidden = F.linear(x, weight) + residual
    return ResidualStream(hidden, None, hidden.float().pow(2).sum(-1)[None])


def linear_add_triton(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor,
                      config: SkinnyConfig | None = None) -> ResidualStream:
    m, n, k = x.shape[0], weight.shape[0], x.shape[1]
    config = config or skinny_config(m, n, k, "linear_add") or _heuristic_config(m, n, k)
    hidden, row_stats = _launch(x, weight, None, config, residual=residual.contiguous())
    return ResidualStream(hidden, None, row_stats)


def linear_add(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> ResidualStream:
    """The residual stream after a projection: ``x W^T + residual``. Summed in the GEMM's epilogue,
    with row statistics, where the kernel runs; elsewhere ``(x W^T, residual)``, the add left to
    the next norm, which does it in the same kernel (no launch of its own either way)."""
    if not use_triton(x):
        return linear_add_reference(x, weight, residual)
    config = _config(x, weight, None, "linear_add")
    if config is None or residual.shape != (x.shape[0], weight.shape[0]) or residual.dtype != x.dtype:
        return ResidualStream(linear(x, weight), residual)
    hidden, row_stats = _launch(x, weight, None, config, residual=residual.contiguous())
    return ResidualStream(hidden, None, row_stats)


def rms_norm_linear_reference(stream: ResidualStream, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                              bias: torch.Tensor | None = None, silu_mul: bool = False, norm_folded: bool = False):
    """``(y, h)``: h = the stream summed; y = rms_norm(h) W^T + b, or with ``silu_mul`` (W = [gate; up],
    no bias) silu(g) * u of that product.

    ``norm_folded`` (the norm's weight folded into W's columns by ``fold_norm_weight``, so
    ``norm_weight`` is all ones) changes nothing here: the unit-weight norm, then W, is the folded
    math, and the model's dtype is kept (no fp32 copy of W per call on the CPU path). The kernel
    scales its fp32 product by 1 / rms instead, so it rounds x / rms nowhere: within an ulp."""
    if stream.residual is None:
        hidden, normed = stream.hidden, rms_norm_reference(stream.hidden, norm_weight, eps)
    else:
        normed, hidden = add_rms_norm_reference(stream.hidden, stream.residual, norm_weight, eps)
    y = F.linear(normed, weight, bias)
    return (silu_mul_reference(y) if silu_mul else y), hidden


def _fused_norm_launch(stream: ResidualStream, eps: float, weight: torch.Tensor, bias, silu_mul: bool,
                       config: SkinnyConfig):
    x = stream.hidden
    return _launch(x, weight, bias, config, norm=(eps, stream.row_stats), gate_silu=silu_mul), x


def rms_norm_linear_triton(stream: ResidualStream, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                           bias: torch.Tensor | None = None, silu_mul: bool = False, norm_folded: bool = False,
                           config: SkinnyConfig | None = None):
    """One launch: needs a folded norm and a summed stream with row statistics (from ``linear_add``)."""
    assert norm_folded, "the kernel runs the norm with its weight folded into W"
    assert stream.residual is None and stream.row_stats is not None, "needs linear_add's summed stream"
    m, n, k = stream.hidden.shape[0], weight.shape[0], stream.hidden.shape[1]
    op = "rms_norm_gate_silu" if silu_mul else "rms_norm_linear"
    config = config or skinny_config(m, n, k, op) or _heuristic_config(m, n, k)
    return _fused_norm_launch(stream, eps, weight, bias, silu_mul, config)


def rms_norm_linear(stream: ResidualStream, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                    bias: torch.Tensor | None = None, silu_mul: bool = False, norm_folded: bool = False):
    """``(y, h)`` as in the reference: one launch where the norm is folded, the stream was summed
    with statistics and the table has the shape; else the norm kernel (with the pending add, if
    any; a folded norm's weight is all ones), then the projection."""
    x = stream.hidden
    if not use_triton(x):
        return rms_norm_linear_reference(stream, norm_weight, eps, weight, bias, silu_mul, norm_folded)
    if norm_folded and stream.residual is None and stream.row_stats is not None:
        config = _config(x, weight, bias, "rms_norm_gate_silu" if silu_mul else "rms_norm_linear")
        if config is not None and stream.row_stats.shape[1:] == (x.shape[0],):
            return _fused_norm_launch(stream, eps, weight, bias, silu_mul, config)
    if stream.residual is None:
        hidden, normed = x, rms_norm(x, norm_weight, eps)
    else:
        normed, hidden = add_rms_norm(x, stream.residual, norm_weight, eps)
    y = linear_silu_mul(normed, weight) if silu_mul else linear(normed, weight, bias)
    return y, hidden


@torch.no_grad()
def fold_norm_weight(weight: torch.Tensor, norm_weight: torch.Tensor, rows_per_chunk: int = 4096) -> None:
    """W' = W diag(g) in place of W, rounded once to W's dtype, and g <- 1: then, in real
    arithmetic, rms_norm(x; g) W^T = rms_norm(x; 1) W'^T = (1 / rms(x)) * (x W'^T), so a kernel may
    scale the plain product by 1 / rms(x) afterwards instead of normalising x on its way in.
    Chunked so the fp32 temporary stays small next to the weight."""
    assert weight.shape[-1] == norm_weight.shape[0], (weight.shape, norm_weight.shape)
    g = norm_weight.to(device=weight.device, dtype=torch.float32)
    for start in range(0, weight.shape[0], rows_per_chunk):
        rows = weight[start:start + rows_per_chunk]
        rows.copy_((rows.float() * g).to(weight.dtype))
    norm_weight.fill_(1.0)
