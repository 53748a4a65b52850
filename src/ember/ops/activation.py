"""SwiGLU activation of the MLP: ``silu(gate) * up`` on the merged gate_up projection output.

``silu_mul(x) -> out``: x [T, 2*I] (gate columns first, then up) -> [T, I] in x's dtype.
Rounding follows HF's ``act_fn(gate_proj(x)) * up_proj(x)``: silu is computed in fp32 and
rounded to the dtype, then the product is rounded again. The kernel keeps both roundings;
it differs from the reference only through the fp32 exp implementation.
"""

import torch
import triton
import triton.language as tl

from ember.ops.dispatch import use_triton

# Output columns per program: 1024 keeps 8 elements per thread at 4 warps and gives
# 12 programs per row at Qwen3-8B's I = 12288, enough to fill the GPU even at T = 1.
_BLOCK_I = 1024


def silu_mul_reference(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, intermediate_size, x_row_stride, out_row_stride, BLOCK_I: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask = cols < intermediate_size
    x_row = x_ptr + row * x_row_stride
    gate = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_row + intermediate_size + cols, mask=mask, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    # torch's silu: x / (1 + exp(-x)) in fp32, rounded to the dtype before the multiply.
    activated = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * out_row_stride + cols, (activated * up).to(dtype), mask=mask)


def silu_mul_triton(x: torch.Tensor) -> torch.Tensor:
    assert x.dim() == 2 and x.shape[1] % 2 == 0 and x.stride(1) == 1, (x.shape, x.stride())
    num_tokens, intermediate_size = x.shape[0], x.shape[1] // 2
    out = torch.empty((num_tokens, intermediate_size), dtype=x.dtype, device=x.device)
    if num_tokens == 0:
        return out
    block_i = min(_BLOCK_I, triton.next_power_of_2(intermediate_size))
    grid = (num_tokens, triton.cdiv(intermediate_size, block_i))
    _silu_mul_kernel[grid](
        x, out, intermediate_size, x.stride(0), out.stride(0), BLOCK_I=block_i, num_warps=4,
        enable_fp_fusion=False,  # no FMA: every product rounds on its own, as in torch's separate ops
    )
    return out


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    if use_triton(x):
        return silu_mul_triton(x)
    return silu_mul_reference(x)
