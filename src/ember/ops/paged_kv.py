"""Reading the paged KV cache: the pieces prefill and decode attention share.

Key position p of sequence b lives in cache block ``block_tables[b, p // block_size]`` at offset
``p % block_size``; the cache is ``[num_blocks, block_size, num_kv_heads, head_dim]``. Block-table
entries past a sequence's ``context_len`` are never dereferenced (every gather is masked by
position first). Softmax runs in fp32 (exp2 with the scale folded into log2(e)).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def load_kv_tile(k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head_offset, tile_start, kv_end, stride_kv_block,
                 stride_kv_offset, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                 MASK: tl.constexpr):
    """The K and V tiles [BLOCK_N, HEAD_DIM] of key positions [tile_start, tile_start + BLOCK_N), in
    the cache's dtype; with MASK != 0, rows at or past kv_end are zeros and never read."""
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
    return k, v


@triton.jit
def attend_kv(acc, m_i, l_i, q, q_pos, k, v, tile_start, kv_end, qk_scale,
              BLOCK_N: tl.constexpr, MASK: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """One online-softmax step over loaded K/V tiles of key positions [tile_start, tile_start + BLOCK_N).

    MASK: 0 = every key visible (no masking at all), 1 = causal (key_pos <= q_pos), 2 = key_pos < kv_end.
    """
    key_pos = tile_start + tl.arange(0, BLOCK_N)
    if UPCAST_DOT:  # the interpreter's bf16 dot is broken; GPUs keep 16-bit operands
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    # "ieee" only matters for fp32 operands: keeps fp32 exact instead of tf32.
    s = tl.dot(q, tl.trans(k), input_precision="ieee")
    if MASK == 1:
        s = tl.where(key_pos[None, :] <= q_pos[:, None], s, float("-inf"))
    elif MASK == 2:
        s = tl.where((key_pos < kv_end)[None, :], s, float("-inf"))
    # Scores stay unscaled; the scale rides in the exp2 argument as one FMA.
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    return acc, m_new, l_i


@triton.jit
def attend_tile(acc, m_i, l_i, q, q_pos, k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head_offset,
                 tile_start, kv_end, qk_scale, stride_kv_block, stride_kv_offset,
                 BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                 MASK: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """load_kv_tile, then attend_kv: one online-softmax step over the keys of one tile."""
    k, v = load_kv_tile(k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head_offset, tile_start, kv_end,
                        stride_kv_block, stride_kv_offset, BLOCK_SIZE, BLOCK_N, HEAD_DIM, MASK)
    return attend_kv(acc, m_i, l_i, q, q_pos, k, v, tile_start, kv_end, qk_scale, BLOCK_N, MASK, UPCAST_DOT)



def check_inputs(q, k_cache, v_cache, block_tables):
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



# ---------------------------------------------------------------- the references' pieces
def attend_reference(q, keys, values, q_pos, scale):
    """q [n, Hq, D] at absolute positions q_pos [n]; keys/values [ctx, Hkv, D] at positions 0..ctx-1."""
    group = q.shape[1] // keys.shape[1]
    keys = keys.float().repeat_interleave(group, dim=1)
    values = values.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), keys) * scale
    visible = torch.arange(keys.shape[0], device=q.device)[None, :] <= q_pos[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no visible key -> zeros
    return torch.einsum("hqk,khd->qhd", probs, values).to(q.dtype)


def gather_kv(k_cache, v_cache, block_table, ctx_len):
    """The sequence's K/V [ctx_len, Hkv, D], reading only the first cdiv(ctx_len, block_size) blocks."""
    block_size = k_cache.shape[1]
    pos = torch.arange(ctx_len, device=k_cache.device)
    blocks = block_table[pos // block_size].long()
    return k_cache[blocks, pos % block_size], v_cache[blocks, pos % block_size]

