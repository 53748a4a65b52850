"""RMSNorm, alone and fused with the residual add that precedes it in every decoder layer.

Numerics follow HF's ``Qwen3RMSNorm``: the statistics in fp32, the normalised row rounded to
the input dtype, then multiplied by the weight in the (promoted) model dtype. The kernels keep
both rounding points, so they differ from the references only by the order of the fp32 sum
and the rsqrt implementation. One program normalises one row held entirely in registers.
"""

import torch
import triton
import triton.language as tl

from ember.ops.dispatch import pdl_enabled, pdl_sync, use_triton

# A whole row lives in registers; beyond this it would spill (Qwen3 hidden sizes are <= 8192).
_MAX_HIDDEN = 65536


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF ``Qwen3RMSNorm.forward`` over the last dim."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm_reference(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual_out = residual + x`` (HF: ``hidden = residual + hidden``), then RMSNorm of it."""
    residual_out = residual + x
    return rms_norm_reference(residual_out, weight, eps), residual_out


@triton.jit
def _normalize_row(x, weight_ptr, cols, mask, hidden_size, eps, x_dtype: tl.constexpr, out_dtype: tl.constexpr):
    # x: one fp32 row holding values of x_dtype, zero where masked.
    variance = tl.sum(x * x, axis=0) / hidden_size
    h = (x * tl.math.rsqrt(variance + eps)).to(x_dtype).to(tl.float32)  # HF: .to(input_dtype)
    w = tl.load(weight_ptr + cols, mask=mask).to(tl.float32)
    # A product of two bf16/fp16 values is exact in fp32, so one rounding equals torch's.
    return (w * h).to(out_dtype)


@triton.jit
def _rms_norm_kernel(x_ptr, weight_ptr, out_ptr, hidden_size, x_row_stride, out_row_stride, eps,
                     BLOCK_H: tl.constexpr, USE_PDL: tl.constexpr):
    if USE_PDL:  # x comes from the previous kernel: wait before any access (ops/dispatch.py)
        pdl_sync()
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < hidden_size
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    out = _normalize_row(x, weight_ptr, cols, mask, hidden_size, eps, x_ptr.dtype.element_ty, out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * out_row_stride + cols, out, mask=mask)


@triton.jit
def _add_rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    residual_out_ptr,
    hidden_size,
    x_row_stride,
    residual_row_stride,
    out_row_stride,
    residual_out_row_stride,
    eps,
    BLOCK_H: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    if USE_PDL:  # x and residual come from earlier kernels: wait before any access (ops/dispatch.py)
        pdl_sync()
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < hidden_size
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    residual = tl.load(residual_ptr + row * residual_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    # The sum is rounded to the model dtype before it is normalised, exactly as HF stores it.
    summed = (residual + x).to(residual_out_ptr.dtype.element_ty)
    tl.store(residual_out_ptr + row * residual_out_row_stride + cols, summed, mask=mask)
    out = _normalize_row(
        summed.to(tl.float32), weight_ptr, cols, mask, hidden_size, eps,
        residual_out_ptr.dtype.element_ty, out_ptr.dtype.element_ty,
    )
    tl.store(out_ptr + row * out_row_stride + cols, out, mask=mask)


def _launch_config(hidden_size: int) -> tuple[int, int]:
    assert hidden_size <= _MAX_HIDDEN, f"rms_norm kernel holds a row in registers; {hidden_size} is too wide"
    block_h = triton.next_power_of_2(hidden_size)
    # About 8-16 elements per thread: 4096 columns -> 8 warps.
    num_warps = min(max(block_h // 512, 1), 16)
    return block_h, num_warps


def _check_rows(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.dim() == 2 and t.stride(1) == 1, f"expected [T, H] with contiguous rows, got {tuple(t.shape)}"


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    _check_rows(x)
    num_tokens, hidden_size = x.shape
    out = torch.empty((num_tokens, hidden_size), dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if num_tokens == 0:
        return out
    block_h, num_warps = _launch_config(hidden_size)
    use_pdl = pdl_enabled(x.device)
    _rms_norm_kernel[(num_tokens,)](
        x, weight.contiguous(), out, hidden_size, x.stride(0), out.stride(0), eps,
        BLOCK_H=block_h, USE_PDL=use_pdl, num_warps=num_warps, launch_pdl=use_pdl,
    )
    return out


def add_rms_norm_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns new tensors ``(out, residual_out)``; x and residual are left untouched."""
    _check_rows(x, residual)
    assert x.shape == residual.shape and x.dtype == residual.dtype, (x.shape, residual.shape, x.dtype, residual.dtype)
    num_tokens, hidden_size = x.shape
    residual_out = torch.empty_like(x, memory_format=torch.contiguous_format)
    out = torch.empty((num_tokens, hidden_size), dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if num_tokens == 0:
        return out, residual_out
    block_h, num_warps = _launch_config(hidden_size)
    use_pdl = pdl_enabled(x.device)
    _add_rms_norm_kernel[(num_tokens,)](
        x, residual, weight.contiguous(), out, residual_out, hidden_size,
        x.stride(0), residual.stride(0), out.stride(0), residual_out.stride(0), eps,
        BLOCK_H=block_h, USE_PDL=use_pdl, num_warps=num_warps, launch_pdl=use_pdl,
    )
    return out, residual_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if use_triton(x):
        return rms_norm_triton(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns new tensors ``(rms_norm(residual + x), residual + x)``; the inputs are not modified."""
    if use_triton(x):
        return add_rms_norm_triton(x, residual, weight, eps)
    return add_rms_norm_reference(x, residual, weight, eps)
