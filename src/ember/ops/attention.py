"""Causal prefill attention (flash attention) over the paged KV cache, for prompt chunks of any
length with their cached prefix; decode attention is in ``ops/decode_attention.py`` and the paged
layout in ``ops/paged_kv.py``. Softmax runs in fp32; the output has q's dtype.
"""

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ember.ops.dispatch import use_triton
from ember.ops.paged_kv import attend_reference, attend_tile, check_inputs, gather_kv

# ---------------------------------------------------------------- tunables (H100 / H200)
PREFILL_BLOCK_M = 64  # query rows per program
PREFILL_BLOCK_N = 64  # key tokens per tile
PREFILL_NUM_WARPS = 4
PREFILL_NUM_STAGES = 2


# ---------------------------------------------------------------- prefill
def _output(q: Tensor, out: Tensor | None) -> Tensor:
    if out is None:
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)
    assert out.shape == q.shape and out.dtype == q.dtype and out.stride(2) == 1, (out.shape, out.dtype)
    return out


# The block table's row stride is its width, which changes from step to step (the longest
# sequence's block count in eager steps): specialising on it (== 1, % 16) compiled new variants
# in the middle of a workload, ~1 s each (benchmarks/NOTES.md, session 4).
# first_seq likewise: a mixed step starts at its first prompt chunk, after any number of decode rows
# (slicing the per-sequence tensors there instead compiled a variant per pointer alignment).
@triton.jit(do_not_specialize=["stride_bt_seq", "first_seq"])
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, cu_seqlens_q_ptr, context_lens_ptr,
                    block_tables_ptr, qk_scale, stride_q_tok, stride_q_head, stride_out_tok, stride_out_head,
                    stride_kv_block, stride_kv_offset, stride_kv_head, stride_bt_seq, first_seq,
                    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST_DOT: tl.constexpr):
    q_block = tl.program_id(0)
    seq = tl.program_id(1) + first_seq
    head = tl.program_id(2)
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    if q_block * BLOCK_M >= q_len:  # grid is sized for max_seqlen_q; also covers q_len == 0
        return
    ctx_len = tl.load(context_lens_ptr + seq)
    first_pos = ctx_len - q_len  # absolute position of the sequence's first new token

    rows = q_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = rows < q_len
    offs_d = tl.arange(0, HEAD_DIM)
    q_tok = (q_start + rows).to(tl.int64)
    q = tl.load(q_ptr + q_tok[:, None] * stride_q_tok + head * stride_q_head + offs_d[None, :],
                mask=row_valid[:, None], other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
    q_pos = first_pos + rows

    block_table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    kv_head_offset = (head // GROUP) * stride_kv_head
    # Keys at or before this block's first query are visible to all its rows: no causal mask.
    block_first_pos = first_pos + q_block * BLOCK_M
    kv_end = first_pos + tl.minimum((q_block + 1) * BLOCK_M, q_len)  # past the last row's key
    unmasked_end = (block_first_pos + 1) // BLOCK_N * BLOCK_N

    # Finite start so a row whose keys in a tile are all masked gets p = 0, not NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for tile_start in range(0, unmasked_end, BLOCK_N):
        acc, m_i, l_i = attend_tile(acc, m_i, l_i, q, q_pos, k_cache_ptr, v_cache_ptr, block_table_ptr,
                                     kv_head_offset, tile_start, kv_end, qk_scale, stride_kv_block,
                                     stride_kv_offset, BLOCK_SIZE, BLOCK_N, HEAD_DIM, 0, UPCAST_DOT)
    for tile_start in range(unmasked_end, kv_end, BLOCK_N):
        acc, m_i, l_i = attend_tile(acc, m_i, l_i, q, q_pos, k_cache_ptr, v_cache_ptr, block_table_ptr,
                                     kv_head_offset, tile_start, kv_end, qk_scale, stride_kv_block,
                                     stride_kv_offset, BLOCK_SIZE, BLOCK_N, HEAD_DIM, 1, UPCAST_DOT)
    out = acc / l_i[:, None]
    tl.store(out_ptr + q_tok[:, None] * stride_out_tok + head * stride_out_head + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None])



def paged_prefill_attention_triton(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, cu_seqlens_q: Tensor, context_lens: Tensor,
    block_tables: Tensor, scale: float, max_seqlen_q: int, out: Tensor | None = None, first_seq: int = 0,
) -> Tensor:
    group, block_size, head_dim, upcast_dot = check_inputs(q, k_cache, v_cache, block_tables)
    out = _output(q, out)
    num_seqs = cu_seqlens_q.shape[0] - 1 - first_seq
    if num_seqs <= 0 or max_seqlen_q == 0 or q.shape[0] == 0:
        return out
    grid = (triton.cdiv(max_seqlen_q, PREFILL_BLOCK_M), num_seqs, q.shape[1])
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, cu_seqlens_q, context_lens, block_tables, scale * math.log2(math.e),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0), first_seq,
        GROUP=group, BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_M=PREFILL_BLOCK_M,
        BLOCK_N=PREFILL_BLOCK_N, UPCAST_DOT=upcast_dot,
        num_warps=PREFILL_NUM_WARPS, num_stages=PREFILL_NUM_STAGES)
    return out



# ---------------------------------------------------------------- reference and dispatch
def paged_prefill_attention_reference(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, cu_seqlens_q: Tensor, context_lens: Tensor,
    block_tables: Tensor, scale: float, max_seqlen_q: int, out: Tensor | None = None, first_seq: int = 0,
) -> Tensor:
    out = _output(q, out)
    cu = cu_seqlens_q.tolist()
    for seq, ctx_len in enumerate(context_lens.tolist()):
        if seq < first_seq:
            continue
        q_start, q_end = cu[seq], cu[seq + 1]
        if q_end == q_start:
            continue
        keys, values = gather_kv(k_cache, v_cache, block_tables[seq], ctx_len)
        q_pos = torch.arange(ctx_len - (q_end - q_start), ctx_len, device=q.device)
        out[q_start:q_end] = attend_reference(q[q_start:q_end], keys, values, q_pos, scale)
    return out



def paged_prefill_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, cu_seqlens_q: Tensor, context_lens: Tensor,
    block_tables: Tensor, scale: float, max_seqlen_q: int, out: Tensor | None = None, first_seq: int = 0,
) -> Tensor:
    """Attention of the new tokens q [T, Hq, D] (``cu_seqlens_q``: each sequence's rows) over their
    cache, for the sequences from ``first_seq`` on; into ``out`` (q's shape, head_dim contiguous)
    when given, where the rows of the sequences before ``first_seq`` are left as they are."""
    impl = paged_prefill_attention_triton if use_triton(q) else paged_prefill_attention_reference
    return impl(q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, scale, max_seqlen_q, out, first_seq)

