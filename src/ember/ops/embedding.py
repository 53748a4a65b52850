"""Token embedding lookup: gather rows of the embedding table.

``embedding(token_ids, weight) -> out``: token_ids int32/int64 [T], weight [V, H] -> [T, H] in
weight's dtype. A pure copy, so the kernel is bit-exact with the reference. Ids must lie in
[0, V): the reference raises on a bad id, the kernel does not check (it would read out of bounds).
"""

import torch
import triton
import triton.language as tl

from ember.ops.dispatch import pdl_enabled, pdl_sync, use_triton

# Columns copied per program: 1024 bf16 = 2 KiB, enough for wide vector loads with 4 warps.
_BLOCK_H = 1024


def embedding_reference(token_ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """HF's ``nn.Embedding`` forward (padding_idx only matters for gradients)."""
    return torch.nn.functional.embedding(token_ids, weight)


@triton.jit
def _embedding_kernel(
    token_ids_ptr,
    weight_ptr,
    out_ptr,
    hidden_size,
    weight_row_stride,
    out_row_stride,
    BLOCK_H: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    if USE_PDL:  # token ids may come from the previous kernel (sampling): nothing is touched before
        pdl_sync()
    token = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < hidden_size
    # int64 row offset: V * H exceeds 2**31 for large vocabularies times wide models.
    token_id = tl.load(token_ids_ptr + token).to(tl.int64)
    row = tl.load(weight_ptr + token_id * weight_row_stride + cols, mask=mask)
    tl.store(out_ptr + token.to(tl.int64) * out_row_stride + cols, row, mask=mask)


def embedding_triton(token_ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    assert token_ids.dim() == 1 and weight.dim() == 2, (token_ids.shape, weight.shape)
    assert weight.stride(1) == 1, "embedding rows must be contiguous"
    num_tokens, hidden_size = token_ids.shape[0], weight.shape[1]
    out = torch.empty((num_tokens, hidden_size), dtype=weight.dtype, device=weight.device)
    if num_tokens == 0:
        return out
    token_ids = token_ids.contiguous()
    block_h = min(_BLOCK_H, triton.next_power_of_2(hidden_size))
    grid = (num_tokens, triton.cdiv(hidden_size, block_h))
    use_pdl = pdl_enabled(weight.device)
    _embedding_kernel[grid](
        token_ids,
        weight,
        out,
        hidden_size,
        weight.stride(0),
        out.stride(0),
        BLOCK_H=block_h,
        USE_PDL=use_pdl,
        num_warps=4,
        launch_pdl=use_pdl,
    )
    return out


def embedding(token_ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if use_triton(weight):
        return embedding_triton(token_ids, weight)
    return embedding_reference(token_ids, weight)
