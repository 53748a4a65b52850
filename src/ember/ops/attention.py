"""Causal attention over the paged KV cache: prefill (flash attention) and decode (flash decoding).

Both read K/V through ``block_tables``: key position p of sequence b lives in cache block
``block_tables[b, p // block_size]`` at offset ``p % block_size``. Block-table entries past a
sequence's ``context_len`` are never dereferenced (every gather is masked by position first).
Softmax runs in fp32 (exp2 with the scale folded into log2(e)); the output has q's dtype.
"""

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ember.ops.dispatch import use_triton

# ---------------------------------------------------------------- tunables (H100 / H200)
PREFILL_BLOCK_M = 64  # query rows per program
PREFILL_BLOCK_N = 64  # key tokens per tile
PREFILL_NUM_WARPS = 4
PREFILL_NUM_STAGES = 2
DECODE_BLOCK_N = 64  # key tokens per tile
DECODE_MIN_ROWS = 16  # tl.dot needs >= 16 rows: the GQA group is padded up to this
DECODE_NUM_WARPS = 4
DECODE_NUM_STAGES = 3
DECODE_TARGET_PROGRAMS = 512  # about 4 waves on 132 SMs: best measured on an H200 for B = 1..128
DECODE_MAX_SPLITS = 64
DECODE_MIN_TOKENS_PER_SPLIT = 64  # one key tile


def decode_num_splits(batch_size: int, num_kv_heads: int, max_blocks_per_seq: int, block_size: int) -> int:
    """Splits per (sequence, kv head) for decode, from shapes only (CUDA-graph safe).

    Enough programs to fill the GPU, but no split shorter than DECODE_MIN_TOKENS_PER_SPLIT
    of the block table's capacity; short sequences simply leave their tail splits empty.
    """
    wanted = triton.cdiv(DECODE_TARGET_PROGRAMS, batch_size * num_kv_heads)
    by_capacity = max_blocks_per_seq * block_size // DECODE_MIN_TOKENS_PER_SPLIT
    return max(1, min(wanted, by_capacity, DECODE_MAX_SPLITS))


def decode_workspace_numel(batch_size: int, num_q_heads: int, head_dim: int, num_splits: int) -> int:
    """fp32 elements of the decode workspace: per split, an accumulator row plus (max, sum)."""
    return batch_size * num_q_heads * num_splits * (head_dim + 2)


# ---------------------------------------------------------------- shared kernel pieces
@triton.jit
def _attend_tile(acc, m_i, l_i, q, q_pos, k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head_offset,
                 tile_start, kv_end, qk_scale, stride_kv_block, stride_kv_offset,
                 BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                 MASK: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """One online-softmax step over key positions [tile_start, tile_start + BLOCK_N).

    MASK: 0 = every key visible (no masking at all), 1 = causal (key_pos <= q_pos), 2 = key_pos < kv_end.
    """
    key_pos = tile_start + tl.arange(0, BLOCK_N)
    in_range = key_pos < kv_end
    # Gather each token's slot through the block table; masked so garbage entries are never used.
    if MASK == 0:
        block_id = tl.load(block_table_ptr + key_pos // BLOCK_SIZE)
    else:
        block_id = tl.load(block_table_ptr + key_pos // BLOCK_SIZE, mask=in_range, other=0)
    token_offset = block_id.to(tl.int64) * stride_kv_block + (key_pos % BLOCK_SIZE) * stride_kv_offset
    kv_offsets = (token_offset + kv_head_offset)[:, None] + tl.arange(0, HEAD_DIM)[None, :]
    if MASK == 0:
        k = tl.load(k_cache_ptr + kv_offsets)
        v = tl.load(v_cache_ptr + kv_offsets)
    else:
        k = tl.load(k_cache_ptr + kv_offsets, mask=in_range[:, None], other=0.0)
        v = tl.load(v_cache_ptr + kv_offsets, mask=in_range[:, None], other=0.0)
    if UPCAST_DOT:  # the interpreter's bf16 dot is broken; GPUs keep 16-bit operands
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    # "ieee" only matters for fp32 operands: keeps fp32 exact instead of tf32.
    s = tl.dot(q, tl.trans(k), input_precision="ieee")
    if MASK == 1:
        s = tl.where(key_pos[None, :] <= q_pos[:, None], s, float("-inf"))
    elif MASK == 2:
        s = tl.where(in_range[None, :], s, float("-inf"))
    # Scores stay unscaled; the scale rides in the exp2 argument as one FMA.
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    return acc, m_new, l_i


# ---------------------------------------------------------------- prefill
@triton.jit
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, cu_seqlens_q_ptr, context_lens_ptr,
                    block_tables_ptr, qk_scale, stride_q_tok, stride_q_head, stride_out_tok, stride_out_head,
                    stride_kv_block, stride_kv_offset, stride_kv_head, stride_bt_seq,
                    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST_DOT: tl.constexpr):
    q_block = tl.program_id(0)
    seq = tl.program_id(1)
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
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, q_pos, k_cache_ptr, v_cache_ptr, block_table_ptr,
                                     kv_head_offset, tile_start, kv_end, qk_scale, stride_kv_block,
                                     stride_kv_offset, BLOCK_SIZE, BLOCK_N, HEAD_DIM, 0, UPCAST_DOT)
    for tile_start in range(unmasked_end, kv_end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, q_pos, k_cache_ptr, v_cache_ptr, block_table_ptr,
                                     kv_head_offset, tile_start, kv_end, qk_scale, stride_kv_block,
                                     stride_kv_offset, BLOCK_SIZE, BLOCK_N, HEAD_DIM, 1, UPCAST_DOT)
    out = acc / l_i[:, None]
    tl.store(out_ptr + q_tok[:, None] * stride_out_tok + head * stride_out_head + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None])


def _check_inputs(q, k_cache, v_cache, block_tables):
    assert q.dtype == k_cache.dtype == v_cache.dtype, "q and the KV cache must share a dtype"
    assert k_cache.stride() == v_cache.stride(), "k_cache and v_cache must share a layout"
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1, "head_dim must be contiguous"
    assert block_tables.stride(-1) == 1
    head_dim = q.shape[-1]
    assert head_dim == k_cache.shape[-1] and head_dim & (head_dim - 1) == 0, "head_dim: a power of two"
    block_size = k_cache.shape[1]
    assert block_size & (block_size - 1) == 0, "block_size: a power of two"
    assert q.shape[1] % k_cache.shape[2] == 0, "num_q_heads must be a multiple of num_kv_heads"
    # The interpreter (CPU tensors) mis-computes bf16 dots; GPUs must keep them 16-bit.
    return q.shape[1] // k_cache.shape[2], block_size, head_dim, not q.is_cuda


def paged_prefill_attention_triton(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, cu_seqlens_q: Tensor, context_lens: Tensor,
    block_tables: Tensor, scale: float, max_seqlen_q: int,
) -> Tensor:
    group, block_size, head_dim, upcast_dot = _check_inputs(q, k_cache, v_cache, block_tables)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    num_seqs = cu_seqlens_q.shape[0] - 1
    if num_seqs == 0 or max_seqlen_q == 0 or q.shape[0] == 0:
        return out
    grid = (triton.cdiv(max_seqlen_q, PREFILL_BLOCK_M), num_seqs, q.shape[1])
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, cu_seqlens_q, context_lens, block_tables, scale * math.log2(math.e),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        GROUP=group, BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_M=PREFILL_BLOCK_M,
        BLOCK_N=PREFILL_BLOCK_N, UPCAST_DOT=upcast_dot,
        num_warps=PREFILL_NUM_WARPS, num_stages=PREFILL_NUM_STAGES)
    return out


# ---------------------------------------------------------------- decode (split-K)
@triton.jit
def _decode_split_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, partial_acc_ptr, partial_stats_ptr,
                         block_tables_ptr, context_lens_ptr, qk_scale, stride_q_seq, stride_q_head,
                         stride_kv_block, stride_kv_offset, stride_kv_head, stride_bt_seq,
                         NUM_Q_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                         NUM_SPLITS: tl.constexpr, UPCAST_DOT: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx_len = tl.load(context_lens_ptr + seq)
    # Whole key tiles per split, computed on device, so the grid never depends on lengths.
    tokens_per_split = tl.cdiv(tl.cdiv(ctx_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, ctx_len)
    if NUM_SPLITS > 1:
        if start >= end:  # a short sequence's tail split: the reducer skips it
            return

    # All query heads of the GQA group share the K/V tiles; rows past the group are padding.
    offs_h = tl.arange(0, BLOCK_H)
    heads = kv_head * GROUP + offs_h
    head_valid = offs_h < GROUP
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + seq.to(tl.int64) * stride_q_seq + heads[:, None] * stride_q_head + offs_d[None, :],
                mask=head_valid[:, None], other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
    block_table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq

    m_i = tl.full([BLOCK_H], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], dtype=tl.float32)
    for tile_start in range(start, end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, offs_h, k_cache_ptr, v_cache_ptr, block_table_ptr,
                                     kv_head * stride_kv_head, tile_start, end, qk_scale, stride_kv_block,
                                     stride_kv_offset, BLOCK_SIZE, BLOCK_N, HEAD_DIM, 2, UPCAST_DOT)

    row = (seq * NUM_Q_HEADS + heads).to(tl.int64)
    if NUM_SPLITS == 1:  # nothing to merge: write the output directly (zeros for context_len 0)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=head_valid[:, None])
    else:
        partial = row * NUM_SPLITS + split
        tl.store(partial_acc_ptr + partial[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=head_valid[:, None])
        tl.store(partial_stats_ptr + partial * 2, m_i, mask=head_valid)
        tl.store(partial_stats_ptr + partial * 2 + 1, l_i, mask=head_valid)


@triton.jit
def _decode_reduce_kernel(out_ptr, partial_acc_ptr, partial_stats_ptr, context_lens_ptr,
                          NUM_Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                          NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    ctx_len = tl.load(context_lens_ptr + seq)
    tokens_per_split = tl.cdiv(tl.cdiv(ctx_len, NUM_SPLITS), BLOCK_N) * BLOCK_N  # as in the split kernel
    num_valid = tl.cdiv(ctx_len, tl.maximum(tokens_per_split, 1))
    splits = tl.arange(0, BLOCK_S)
    valid = splits < num_valid
    partial = (seq * NUM_Q_HEADS + head).to(tl.int64) * NUM_SPLITS + splits
    m = tl.load(partial_stats_ptr + partial * 2, mask=valid, other=-1.0e30)
    l = tl.load(partial_stats_ptr + partial * 2 + 1, mask=valid, other=0.0)
    offs_d = tl.arange(0, HEAD_DIM)
    acc = tl.load(partial_acc_ptr + partial[:, None] * HEAD_DIM + offs_d[None, :], mask=valid[:, None], other=0.0)
    weight = tl.where(valid, tl.exp2(m - tl.max(m, 0)), 0.0)
    denominator = tl.sum(weight * l, 0)
    out = tl.sum(weight[:, None] * acc, 0) / tl.where(denominator > 0, denominator, 1.0)  # ctx 0 -> zeros
    tl.store(out_ptr + (seq * NUM_Q_HEADS + head).to(tl.int64) * HEAD_DIM + offs_d,
             out.to(out_ptr.dtype.element_ty))


def paged_decode_attention_triton(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor, scale: float,
    *, workspace: Tensor | None = None, num_splits: int | None = None,
) -> Tensor:
    group, block_size, head_dim, upcast_dot = _check_inputs(q, k_cache, v_cache, block_tables)
    batch_size, num_q_heads, _ = q.shape
    num_kv_heads = k_cache.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if batch_size == 0:
        return out
    if num_splits is None:
        num_splits = decode_num_splits(batch_size, num_kv_heads, block_tables.shape[1], block_size)
    numel = decode_workspace_numel(batch_size, num_q_heads, head_dim, num_splits)
    if workspace is None:
        workspace = torch.empty(numel, dtype=torch.float32, device=q.device)
    assert workspace.dtype == torch.float32 and workspace.device == q.device and workspace.is_contiguous()
    assert workspace.numel() >= numel, "workspace too small: see decode_workspace_numel"
    partial_acc = workspace.view(-1)[: numel // (head_dim + 2) * head_dim]
    partial_stats = workspace.view(-1)[partial_acc.numel(): numel]

    _decode_split_kernel[(batch_size, num_kv_heads, num_splits)](
        q, k_cache, v_cache, out, partial_acc, partial_stats, block_tables, context_lens,
        scale * math.log2(math.e), q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        NUM_Q_HEADS=num_q_heads, GROUP=group, BLOCK_H=max(DECODE_MIN_ROWS, triton.next_power_of_2(group)),
        BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_N=DECODE_BLOCK_N, NUM_SPLITS=num_splits,
        UPCAST_DOT=upcast_dot, num_warps=DECODE_NUM_WARPS, num_stages=DECODE_NUM_STAGES)
    if num_splits > 1:
        _decode_reduce_kernel[(batch_size, num_q_heads)](
            out, partial_acc, partial_stats, context_lens, NUM_Q_HEADS=num_q_heads, HEAD_DIM=head_dim,
            BLOCK_N=DECODE_BLOCK_N, NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits),
            num_warps=4)
    return out


# ---------------------------------------------------------------- references and dispatch
def _attend_reference(q, keys, values, q_pos, scale):
    """q [n, Hq, D] at absolute positions q_pos [n]; keys/values [ctx, Hkv, D] at positions 0..ctx-1."""
    group = q.shape[1] // keys.shape[1]
    keys = keys.float().repeat_interleave(group, dim=1)
    values = values.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), keys) * scale
    visible = torch.arange(keys.shape[0], device=q.device)[None, :] <= q_pos[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no visible key -> zeros
    return torch.einsum("hqk,khd->qhd", probs, values).to(q.dtype)


def _gather_kv(k_cache, v_cache, block_table, ctx_len):
    """The sequence's K/V [ctx_len, Hkv, D], reading only the first cdiv(ctx_len, block_size) blocks."""
    block_size = k_cache.shape[1]
    pos = torch.arange(ctx_len, device=k_cache.device)
    blocks = block_table[pos // block_size].long()
    return k_cache[blocks, pos % block_size], v_cache[blocks, pos % block_size]


def paged_prefill_attention_reference(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, cu_seqlens_q: Tensor, context_lens: Tensor,
    block_tables: Tensor, scale: float, max_seqlen_q: int,
) -> Tensor:
    out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    for seq, ctx_len in enumerate(context_lens.tolist()):
        q_start, q_end = cu[seq], cu[seq + 1]
        if q_end == q_start:
            continue
        keys, values = _gather_kv(k_cache, v_cache, block_tables[seq], ctx_len)
        q_pos = torch.arange(ctx_len - (q_end - q_start), ctx_len, device=q.device)
        out[q_start:q_end] = _attend_reference(q[q_start:q_end], keys, values, q_pos, scale)
    return out


def paged_decode_attention_reference(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor, scale: float,
    *, workspace: Tensor | None = None, num_splits: int | None = None,
) -> Tensor:
    out = torch.empty_like(q)
    for seq, ctx_len in enumerate(context_lens.tolist()):
        keys, values = _gather_kv(k_cache, v_cache, block_tables[seq], ctx_len)
        q_pos = torch.tensor([ctx_len - 1], device=q.device)
        out[seq: seq + 1] = _attend_reference(q[seq: seq + 1], keys, values, q_pos, scale)
    return out


def paged_prefill_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, cu_seqlens_q: Tensor, context_lens: Tensor,
    block_tables: Tensor, scale: float, max_seqlen_q: int,
) -> Tensor:
    impl = paged_prefill_attention_triton if use_triton(q) else paged_prefill_attention_reference
    return impl(q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, scale, max_seqlen_q)


def paged_decode_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor, scale: float,
    *, workspace: Tensor | None = None, num_splits: int | None = None,
) -> Tensor:
    impl = paged_decode_attention_triton if use_triton(q) else paged_decode_attention_reference
    return impl(q, k_cache, v_cache, block_tables, context_lens, scale, workspace=workspace, num_splits=num_splits)
