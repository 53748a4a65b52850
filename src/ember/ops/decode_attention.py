"""Decode attention (flash decoding): one query token per sequence over its paged KV cache.

The keys are split across programs (split-K) so that even batch 1 keeps every SM reading the
cache; the partials are merged in the same launch or a second one (``decode_merge_mode``). The
paged layout and the shared tile step are in ``ops/paged_kv.py``.

``norm_rope_decode_attention`` folds ``ops.rope.qk_norm_rope_store_kv`` into the split kernel:
one launch per layer fewer at decode, where each launch costs ~1-2 us of latency even under CUDA
graphs with PDL. Each split program forms its group's q itself (RMSNorm + RoPE of the raw q);
the one program per (sequence, kv head) whose split holds the new token stores its K/V into the
cache before reading it. Every rounding step is the two kernels' (bitwise equal in the
interpreter); compiled together on an H200, about 1 in 1,000 new K values and ~5-10% of the bf16
outputs came out one rounding apart from the two kernels', within tolerance (the sum of a head's
squares runs in another order, and the compiler schedules the rope with the attention).

At small batches (many splits) the fused kernel also loads, before its PDL wait, what no kernel of
the step writes: context length, block table, position, slot and its first key tile. At short
contexts that is most of a split's chain of dependent loads, which then runs under the qkv
projection's tail. The new token's row of that tile is patched in from registers after the wait.
(H200, batch 1, measured together with the merge kernel's early context-length read and the
split argmax: -2.2 us per layer at 8B, -1.2 us at 0.6B.)
"""

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ember.ops.dispatch import pdl_enabled, pdl_sync, use_triton
from ember.ops.paged_kv import attend_kv, attend_reference, attend_tile, check_inputs, gather_kv, load_kv_tile
from ember.ops.rope import _norm_rope_heads, qk_norm_rope_store_kv_reference

# ---------------------------------------------------------------- tunables (H100 / H200)
DECODE_BLOCK_N = 64  # key tokens per tile
DECODE_MIN_ROWS = 16  # tl.dot needs >= 16 rows: the GQA group is padded up to this
DECODE_NUM_WARPS = 4
DECODE_NUM_STAGES = 3
DECODE_TARGET_PROGRAMS = 512  # about 4 waves on 132 SMs: best measured on an H200 for B = 1..128
DECODE_MAX_SPLITS = 64
# The finest split: one key tile. It bounds the split count from the block-table capacity, and
# on device each split gets at least this many keys. Coarser floors (128-512) measured slower at
# every batch and length: fewer programs, each a longer chain of dependent tiles.
DECODE_MIN_TOKENS_PER_SPLIT = 64
# The fewest splits when they are fitted to the batch's longest context. Measured inside the
# batch-1 decode graph on an H200 (results/2026-12-03-h200-s12-split-sweep/): at 128-512 tokens, 8
# splits (2-8 of them non-empty) beat the capacity's 64 (2-8 non-empty, the other 56-62 programs
# empty) by 14-32 us per step at 0.6B and 17-44 us at 8B, and beat 1, 2 and 4 splits (each split a
# longer chain of tiles; 4 or fewer also means the in-kernel merge).
DECODE_FITTED_MIN_SPLITS = 8
# Where the partials are merged: "kernel" = by the last-arriving split program (one launch),
# "launch" = a second kernel with one program per (sequence, query head). Measured on an H200
# (results/2026-11-22-h200-decode-attention-sweep.txt): with many splits (batch 1-8) the last
# program's merge sits on the critical path and "launch" is up to 2.2x faster (8B, batch 1,
# 8192 tokens: 34.6 -> 15.5 us); with 2 splits (batch 32) the single launch is faster.
DECODE_LAUNCH_MERGE_MIN_SPLITS = 8
# From this many splits the fused kernel loads before its PDL wait (see _decode_attention).
DECODE_PRELOAD_MIN_SPLITS = 8


def decode_merge_mode(num_splits: int) -> str:
    """"kernel" or "launch" (see DECODE_LAUNCH_MERGE_MIN_SPLITS), from the split count alone."""
    return "launch" if num_splits >= DECODE_LAUNCH_MERGE_MIN_SPLITS else "kernel"
# Partial-acc elements the merging program loads per step: 32 fp32 registers a thread at 4 warps.
# 8192 pushed an sm_90 compile past 128 registers (fewer programs per SM) for GQA groups >= 4.
DECODE_MERGE_ELEMS = 4096


def decode_num_splits(batch_size: int, num_kv_heads: int, max_blocks_per_seq: int, block_size: int,
                      longest_context: int | None = None) -> int:
    """Splits per (sequence, kv head) for decode, from shapes only (CUDA-graph safe).

    Enough programs to fill the GPU, but no split shorter than DECODE_MIN_TOKENS_PER_SPLIT of the
    block table's capacity; short sequences simply leave their tail splits empty. Given the
    batch's ``longest_context``, also no more splits than it fills (rounded up to a power of two,
    at least DECODE_FITTED_MIN_SPLITS): empty split programs are not free (see below), so a
    CUDA graph per count is captured and the host picks one by the longest context.
    """
    wanted = triton.cdiv(DECODE_TARGET_PROGRAMS, batch_size * num_kv_heads)
    by_capacity = max_blocks_per_seq * block_size // DECODE_MIN_TOKENS_PER_SPLIT
    num_splits = max(1, min(wanted, by_capacity, DECODE_MAX_SPLITS))
    if longest_context is not None:
        fitted = triton.next_power_of_2(triton.cdiv(max(longest_context, 1), DECODE_MIN_TOKENS_PER_SPLIT))
        num_splits = min(num_splits, max(fitted, DECODE_FITTED_MIN_SPLITS))
    return num_splits


def decode_split_counts(batch_size: int, num_kv_heads: int, max_blocks_per_seq: int, block_size: int) -> list[int]:
    """Every count ``decode_num_splits`` gives for this batch size at any longest context, ascending."""
    capacity = max_blocks_per_seq * block_size
    lengths = [DECODE_MIN_TOKENS_PER_SPLIT << i for i in range(capacity.bit_length()) if
               DECODE_MIN_TOKENS_PER_SPLIT << i < capacity] + [capacity]
    return sorted({decode_num_splits(batch_size, num_kv_heads, max_blocks_per_seq, block_size, n) for n in lengths})


def decode_workspace_numel(batch_size: int, num_q_heads: int, head_dim: int, num_splits: int) -> int:
    """fp32 elements of the decode workspace: per split, an accumulator row plus (max, sum)."""
    return batch_size * num_q_heads * num_splits * (head_dim + 2)


def decode_counters_numel(batch_size: int, num_kv_heads: int) -> int:
    """int32 elements of the decode arrival counters (one per sequence and kv head). Allocate them
    zeroed, once: every launch with num_splits > 1 leaves them all zero again."""
    return batch_size * num_kv_heads


# ---------------------------------------------------------------- decode (split-K)
# Grid (B, Hkv, num_splits). Each program attends its split of the keys for all query heads
# of one KV head. With num_splits > 1 it stores an unnormalised partial (acc, max, sum); then
# either a second launch merges them (one program per query head), or each program counts
# itself in the group's counter and the one that arrives last merges the group's partials into
# the output and zeroes the counter for the next launch/replay (decode_merge_mode picks).
#
# Memory ordering on the GPU: a scalar tl.atomic_add is issued by one thread of the program,
# and triton 3.6 orders nothing else around it, so
#   partial stores (all threads) -> bar.sync -> atom.acq_rel.gpu (one thread)
# makes every thread's stores part of that thread's release; the last program's
#   atom.acq_rel.gpu (one thread) -> bar.sync -> partial loads (all threads)
# orders all its loads after its acquire, which read-from/follows every other program's
# release on the same counter (an RMW chain: each atomic reads the previous one's value).
# The merge loads use .cg (L2, never a stale L1 line) as a belt-and-braces measure. The
# reset needs no ordering inside the launch (all num_splits increments have happened); the
# kernel boundary publishes it to the next launch on the stream.
#
# NORM_ROPE (norm_rope_decode_attention): the new token's K/V are stored by the one program per
# (sequence, kv head) whose split holds position ctx_len - 1, before its tile loop; bar.sync
# orders its threads' global stores before their loads of the slot (the tile loads are cp.async
# after the barrier; the caches are stored through, so no read-only .nc path). No other program
# reads that slot: the other splits end before it, and every kv head has its own writer and columns.
@triton.jit
def _rope_cos_sin(cos_sin_ptr, positions_ptr, seq, HALF_DIM: tl.constexpr, dtype: tl.constexpr):
    """[1, HALF_DIM] cos and sin at the sequence's position, rounded to the model dtype as HF does."""
    half = tl.arange(0, HALF_DIM)[None, :]
    row = cos_sin_ptr + tl.load(positions_ptr + seq).to(tl.int64) * (2 * HALF_DIM)
    cos = tl.load(row + half).to(dtype).to(tl.float32)
    sin = tl.load(row + HALF_DIM + half).to(dtype).to(tl.float32)
    return cos, sin


@triton.jit
def _store_new_kv(k_ptr, v_ptr, k_norm_weight_ptr, cos, sin, slot, k_cache_ptr, v_cache_ptr, seq, kv_head, eps,
                  stride_k_seq, stride_k_head, stride_v_seq, stride_v_head, stride_kv_block, stride_kv_offset,
                  stride_kv_head, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr):
    """NORM_ROPE: the new token's normed+roped k and its v for one kv head into the cache at ``slot``
    (>= 0), as _qk_norm_rope_store_kv_kernel stores them; then a CTA barrier, so that the program's
    own later loads of that slot see the stores. Returns both rows, [1, HEAD_DIM] in the cache dtype."""
    HALF_DIM: tl.constexpr = HEAD_DIM // 2
    half = tl.arange(0, HALF_DIM)[None, :]
    src = k_ptr + seq.to(tl.int64) * stride_k_seq + kv_head * stride_k_head
    k1, k2 = _norm_rope_heads(src, k_norm_weight_ptr, half, half < HALF_DIM, cos, sin, eps, HALF_DIM,
                              k_ptr.dtype.element_ty)
    k_row = tl.reshape(tl.permute(tl.join(k1, k2), (0, 2, 1)), (1, HEAD_DIM)).to(k_cache_ptr.dtype.element_ty)
    offs_d = tl.arange(0, HEAD_DIM)[None, :]
    v_row = tl.load(v_ptr + seq.to(tl.int64) * stride_v_seq + kv_head * stride_v_head + offs_d)
    v_row = v_row.to(v_cache_ptr.dtype.element_ty)
    dst = (slot // BLOCK_SIZE) * stride_kv_block + (slot % BLOCK_SIZE) * stride_kv_offset + kv_head * stride_kv_head
    tl.store(k_cache_ptr + dst + offs_d, k_row)
    tl.store(v_cache_ptr + dst + offs_d, v_row)
    tl.debug_barrier()  # every thread's stores before any thread's loads of the tile loop
    return k_row, v_row


@triton.jit
def _attend_split(q_ptr, k_first, v_first, k_cache_ptr, v_cache_ptr, block_table_ptr, seq, kv_head, start, end,
                  qk_scale, stride_q_seq, stride_q_head, stride_kv_block, stride_kv_offset, stride_kv_head,
                  q_norm_weight_ptr, cos, sin, eps,
                  GROUP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
                  BLOCK_N: tl.constexpr, UPCAST_DOT: tl.constexpr, NORM_ROPE: tl.constexpr,
                  PRELOAD: tl.constexpr):
    """Unnormalised (acc, max, sum) of the GQA group's query heads over keys [start, end); with
    PRELOAD the caller has loaded the first tile already (k_first, v_first: see the split kernel).

    NORM_ROPE: q_ptr holds the raw q, which is RMS-normed and roped here exactly as
    _qk_norm_rope_store_kv_kernel does it (same rounded halves), then put back together."""
    # All query heads of the group share the K/V tiles; rows past the group are padding.
    offs_h = tl.arange(0, BLOCK_H)
    heads = kv_head * GROUP + offs_h
    q_rows = q_ptr + seq.to(tl.int64) * stride_q_seq + heads[:, None] * stride_q_head
    if NORM_ROPE:
        HALF_DIM: tl.constexpr = HEAD_DIM // 2
        half = tl.arange(0, HALF_DIM)[None, :]
        mask = (offs_h < GROUP)[:, None] & (half < HALF_DIM)
        q1, q2 = _norm_rope_heads(q_rows, q_norm_weight_ptr, half, mask, cos, sin, eps, HALF_DIM,
                                  q_ptr.dtype.element_ty)
        # [BLOCK_H, 2, HALF_DIM] -> [BLOCK_H, HEAD_DIM]: the same q tile (padding rows zero) that the
        # unfused path loads, so the dots below are the same dots.
        q = tl.reshape(tl.permute(tl.join(q1, q2), (0, 2, 1)), (BLOCK_H, HEAD_DIM))
    else:
        q = tl.load(q_rows + tl.arange(0, HEAD_DIM)[None, :], mask=(offs_h < GROUP)[:, None], other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_H], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], dtype=tl.float32)
    loop_start = start
    if PRELOAD:
        acc, m_i, l_i = attend_kv(acc, m_i, l_i, q, offs_h, k_first, v_first, start, end, qk_scale, BLOCK_N, 2,
                                  UPCAST_DOT)
        loop_start = start + BLOCK_N
    for tile_start in range(loop_start, end, BLOCK_N):
        acc, m_i, l_i = attend_tile(acc, m_i, l_i, q, offs_h, k_cache_ptr, v_cache_ptr, block_table_ptr,
                                     kv_head * stride_kv_head, tile_start, end, qk_scale, stride_kv_block,
                                     stride_kv_offset, BLOCK_SIZE, BLOCK_N, HEAD_DIM, 2, UPCAST_DOT)
    return acc, m_i, l_i


@triton.jit
def _merge_splits(out_ptr, partial_acc_ptr, partial_stats_ptr, first_row, num_valid,
                  GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr,
                  CHUNK_S: tl.constexpr):
    """Output rows first_row .. first_row + GROUP - 1 (the group's query heads) from their first
    num_valid partials, CHUNK_S splits of all heads per step, online-rescaled like the keys."""
    offs_g = tl.arange(0, BLOCK_G)
    offs_s = tl.arange(0, CHUNK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = first_row + offs_g
    m_i = tl.full([BLOCK_G], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
    for chunk_start in range(0, num_valid, CHUNK_S):
        splits = chunk_start + offs_s
        # Later splits were empty and stored nothing (stale or NaN there): never read them.
        valid = (splits < num_valid)[:, None] & (offs_g < GROUP)[None, :]  # [CHUNK_S, BLOCK_G]
        partial = rows[None, :] * NUM_SPLITS + splits[:, None]
        m = tl.load(partial_stats_ptr + partial * 2, mask=valid, other=-1.0e30, cache_modifier=".cg")
        l = tl.load(partial_stats_ptr + partial * 2 + 1, mask=valid, other=0.0, cache_modifier=".cg")
        part_acc = tl.load(partial_acc_ptr + partial[:, :, None] * HEAD_DIM + offs_d[None, None, :],
                           mask=valid[:, :, None], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m_i, tl.max(m, 0))
        alpha = tl.exp2(m_i - m_new)
        weight = tl.where(valid, tl.exp2(m - m_new[None, :]), 0.0)
        l_i = l_i * alpha + tl.sum(weight * l, 0)
        acc = acc * alpha[:, None] + tl.sum(weight[:, :, None] * part_acc, 0)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # context_len 0: no valid split, zeros
    tl.store(out_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=(offs_g < GROUP)[:, None])


@triton.jit
def _tokens_per_split(ctx_len, min_tokens_per_split, NUM_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Whole key tiles per split, computed on device, so the grid never depends on lengths."""
    return tl.maximum(tl.cdiv(tl.cdiv(ctx_len, NUM_SPLITS), BLOCK_N) * BLOCK_N, min_tokens_per_split)


@triton.jit(do_not_specialize=["stride_bt_seq"])  # see _prefill_kernel
def _decode_split_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, partial_acc_ptr, partial_stats_ptr,
                         counters_ptr, block_tables_ptr, context_lens_ptr, qk_scale, min_tokens_per_split,
                         stride_q_seq, stride_q_head, stride_kv_block, stride_kv_offset, stride_kv_head,
                         stride_bt_seq,
                         # NORM_ROPE only (else dummies, never read): the raw k/v, norms, rope, slots
                         k_ptr, v_ptr, q_norm_weight_ptr, k_norm_weight_ptr, cos_sin_ptr, positions_ptr,
                         slot_mapping_ptr, stride_k_seq, stride_k_head, stride_v_seq, stride_v_head, eps,
                         NUM_Q_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                         NUM_SPLITS: tl.constexpr, BLOCK_G: tl.constexpr, MERGE_CHUNK: tl.constexpr,
                         MERGE_IN_KERNEL: tl.constexpr, UPCAST_DOT: tl.constexpr, USE_PDL: tl.constexpr,
                         NORM_ROPE: tl.constexpr, PRELOAD: tl.constexpr):
    # Every program, empty split or not, waits (pdl_sync) before it writes anything and before it
    # reads what the kernels before it write: q (and with NORM_ROPE the raw k/v), the partials and
    # the counters (the previous launch's last program resets them); without NORM_ROPE also the
    # cache, where the kernel before stored this step's K/V. With PRELOAD (NORM_ROPE at small
    # batches, see _decode_attention) it first reads what only the step's input copy and earlier
    # steps wrote (context length, block table, position, slot, the cached K/V of its first tile;
    # see ops/dispatch.py): at short contexts that is the whole chain of dependent loads of a
    # split, which then overlaps the qkv projection.
    if USE_PDL and not PRELOAD:
        pdl_sync()
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx_len = tl.load(context_lens_ptr + seq)
    tokens_per_split = _tokens_per_split(ctx_len, min_tokens_per_split, NUM_SPLITS, BLOCK_N)
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, ctx_len)
    block_table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_DIM)
    head_valid = offs_h < GROUP
    first_row = seq.to(tl.int64) * NUM_Q_HEADS + kv_head * GROUP
    rows = first_row + offs_h
    if PRELOAD:
        # The split's first key tile (nothing is read for an empty split: every row is masked).
        k_first, v_first = load_kv_tile(k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head * stride_kv_head, start,
                                        end, stride_kv_block, stride_kv_offset, BLOCK_SIZE, BLOCK_N, HEAD_DIM, 2)
    else:
        k_first = 0.0  # never read: the tile loop loads every tile
        v_first = 0.0
    if NORM_ROPE:
        cos, sin = _rope_cos_sin(cos_sin_ptr, positions_ptr, seq, HEAD_DIM // 2, q_ptr.dtype.element_ty)
        slot = tl.load(slot_mapping_ptr + seq).to(tl.int64)
        if USE_PDL and PRELOAD:
            pdl_sync()
        # The new token (position ctx_len - 1) is the last key of the last non-empty split: that
        # program alone stores its K/V (none for context_len 0 or a negative slot), and only it
        # reads that slot. A preloaded first tile was loaded before the store: the new row is
        # patched in (the stored values, so the same as reloading); later tiles load after it.
        if (start < end) & (end == ctx_len) & (slot >= 0):
            k_row, v_row = _store_new_kv(k_ptr, v_ptr, k_norm_weight_ptr, cos, sin, slot, k_cache_ptr, v_cache_ptr,
                                         seq, kv_head, eps, stride_k_seq, stride_k_head, stride_v_seq,
                                         stride_v_head, stride_kv_block, stride_kv_offset, stride_kv_head,
                                         BLOCK_SIZE, HEAD_DIM)
            if PRELOAD:
                is_new = (start + tl.arange(0, BLOCK_N) == ctx_len - 1)[:, None]
                k_first = tl.where(is_new, k_row, k_first)
                v_first = tl.where(is_new, v_row, v_first)
    else:
        cos = 0.0  # never read (no rope without NORM_ROPE)
        sin = 0.0

    if NUM_SPLITS == 1:  # nothing to merge: write the output directly (zeros for context_len 0)
        acc, m_i, l_i = _attend_split(q_ptr, k_first, v_first, k_cache_ptr, v_cache_ptr, block_table_ptr, seq,
                                      kv_head, start, end, qk_scale, stride_q_seq, stride_q_head, stride_kv_block,
                                      stride_kv_offset, stride_kv_head, q_norm_weight_ptr, cos, sin, eps,
                                      GROUP, BLOCK_H, BLOCK_SIZE, HEAD_DIM, BLOCK_N, UPCAST_DOT, NORM_ROPE,
                                      PRELOAD)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=head_valid[:, None])
    else:
        if start < end:  # a short sequence's tail splits (all splits of a padding row) store nothing
            acc, m_i, l_i = _attend_split(q_ptr, k_first, v_first, k_cache_ptr, v_cache_ptr, block_table_ptr, seq,
                                          kv_head, start, end, qk_scale, stride_q_seq, stride_q_head,
                                          stride_kv_block, stride_kv_offset, stride_kv_head, q_norm_weight_ptr,
                                          cos, sin, eps, GROUP, BLOCK_H, BLOCK_SIZE, HEAD_DIM, BLOCK_N,
                                          UPCAST_DOT, NORM_ROPE, PRELOAD)
            partial = rows * NUM_SPLITS + split
            tl.store(partial_acc_ptr + partial[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=head_valid[:, None])
            tl.store(partial_stats_ptr + partial * 2, m_i, mask=head_valid)
            tl.store(partial_stats_ptr + partial * 2 + 1, l_i, mask=head_valid)
    if NUM_SPLITS > 1 and MERGE_IN_KERNEL:
        # Every split counts itself, empty or not, so the count always reaches NUM_SPLITS.
        tl.debug_barrier()  # all threads' partial stores before the (one-thread) release below
        counter_ptr = counters_ptr + seq * (NUM_Q_HEADS // GROUP) + kv_head
        arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
        if arrived == NUM_SPLITS - 1:  # the last of the group: every other partial is visible
            tl.debug_barrier()  # all threads' loads after the (one-thread) acquire above
            num_valid = tl.cdiv(ctx_len, tl.maximum(tokens_per_split, 1))  # splits that stored a partial
            _merge_splits(out_ptr, partial_acc_ptr, partial_stats_ptr, first_row, num_valid,
                          GROUP, BLOCK_G, HEAD_DIM, NUM_SPLITS, MERGE_CHUNK)
            tl.store(counter_ptr, 0)  # ready for the next launch (or graph replay)


@triton.jit
def _decode_merge_kernel(out_ptr, partial_acc_ptr, partial_stats_ptr, context_lens_ptr, min_tokens_per_split,
                         NUM_Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                         NUM_SPLITS: tl.constexpr, MERGE_CHUNK: tl.constexpr, USE_PDL: tl.constexpr):
    """Merge mode "launch": one program per (sequence, query head) merges its partials."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    ctx_len = tl.load(context_lens_ptr + seq)  # the step's input copy wrote it: read before the wait
    if USE_PDL:  # the partials come from the split kernel: wait for it
        pdl_sync()
    tokens_per_split = _tokens_per_split(ctx_len, min_tokens_per_split, NUM_SPLITS, BLOCK_N)
    num_valid = tl.cdiv(ctx_len, tl.maximum(tokens_per_split, 1))
    _merge_splits(out_ptr, partial_acc_ptr, partial_stats_ptr, seq.to(tl.int64) * NUM_Q_HEADS + head, num_valid,
                  1, 1, HEAD_DIM, NUM_SPLITS, MERGE_CHUNK)


def paged_decode_attention_triton(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor, scale: float,
    *, workspace: Tensor | None = None, num_splits: int | None = None, counters: Tensor | None = None,
    min_tokens_per_split: int | None = None, merge: str | None = None, out: Tensor | None = None,
) -> Tensor:
    """Split-K decode. With num_splits > 1 it needs ``workspace`` (fp32, see
    decode_workspace_numel; contents irrelevant) and ``counters`` (int32, see decode_counters_numel;
    all zero on entry, and left all zero); either one left out is allocated per call.
    ``min_tokens_per_split`` and ``merge`` override DECODE_MIN_TOKENS_PER_SPLIT and
    decode_merge_mode (for the tuning sweep). ``out``: where the output goes (q's shape, rows
    contiguous), else it is allocated."""
    return _decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, None, workspace, num_splits,
                             counters, min_tokens_per_split, merge, out)


def norm_rope_decode_attention_triton(
    q: Tensor, k: Tensor, v: Tensor, q_norm_weight: Tensor, k_norm_weight: Tensor, cos_sin: Tensor,
    positions: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor, eps: float,
    block_tables: Tensor, context_lens: Tensor, scale: float,
    *, workspace: Tensor | None = None, num_splits: int | None = None, counters: Tensor | None = None,
    min_tokens_per_split: int | None = None, merge: str | None = None,
) -> Tensor:
    """``qk_norm_rope_store_kv_triton`` then ``paged_decode_attention_triton`` in one launch (two in
    merge mode "launch"): see norm_rope_decode_attention. Scratch and overrides as there."""
    num_kv_heads = k_cache.shape[2]
    assert k.shape == v.shape == (q.shape[0], num_kv_heads, q.shape[2]), (q.shape, k.shape, v.shape)
    assert k.stride(2) == v.stride(2) == 1, "head_dim must be contiguous"
    assert q.dtype == k.dtype == v.dtype == q_norm_weight.dtype == k_norm_weight.dtype, \
        "q/k/v and the norm weights must share a dtype"
    assert cos_sin.dtype == torch.float32 and cos_sin.is_contiguous() and cos_sin.shape[1] == q.shape[2]
    assert positions.shape == slot_mapping.shape == context_lens.shape == (q.shape[0],)
    norm_rope = (k, v, q_norm_weight.contiguous(), k_norm_weight.contiguous(), cos_sin, positions.contiguous(),
                 slot_mapping.contiguous(), eps)
    return _decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, norm_rope, workspace, num_splits,
                             counters, min_tokens_per_split, merge, None)


def _decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, norm_rope, workspace, num_splits,
                      counters, min_tokens_per_split, merge, out) -> Tensor:
    """The launches of both ops; ``norm_rope`` = (k, v, q_norm_weight, k_norm_weight, cos_sin, positions,
    slot_mapping, eps) for the fused one, else None."""
    group, block_size, head_dim, upcast_dot = check_inputs(q, k_cache, v_cache, block_tables)
    batch_size, num_q_heads, _ = q.shape
    num_kv_heads = k_cache.shape[2]
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    # The kernels address output rows as (sequence * Hq + head) * D.
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous(), (out.shape, out.stride())
    if batch_size == 0:
        return out
    if num_splits is None:
        num_splits = decode_num_splits(batch_size, num_kv_heads, block_tables.shape[1], block_size)
    if num_splits == 1:  # never dereferenced: no scratch at all
        partial_acc = partial_stats = out
        counters = context_lens
    else:
        numel = decode_workspace_numel(batch_size, num_q_heads, head_dim, num_splits)
        if workspace is None:
            workspace = torch.empty(numel, dtype=torch.float32, device=q.device)
        assert workspace.dtype == torch.float32 and workspace.device == q.device and workspace.is_contiguous()
        assert workspace.numel() >= numel, "workspace too small: see decode_workspace_numel"
        partial_acc = workspace.view(-1)[: numel // (head_dim + 2) * head_dim]
        partial_stats = workspace.view(-1)[partial_acc.numel(): numel]
        if counters is None:
            counters = torch.zeros(decode_counters_numel(batch_size, num_kv_heads), dtype=torch.int32,
                                   device=q.device)
        assert counters.dtype == torch.int32 and counters.device == q.device and counters.is_contiguous()
        assert counters.numel() >= decode_counters_numel(batch_size, num_kv_heads), \
            "counters too small: see decode_counters_numel"

    min_tokens = DECODE_MIN_TOKENS_PER_SPLIT if min_tokens_per_split is None else min_tokens_per_split
    assert min_tokens > 0 and min_tokens % DECODE_BLOCK_N == 0, "min_tokens_per_split: whole key tiles"
    merge = decode_merge_mode(num_splits) if merge is None else merge
    assert merge in ("kernel", "launch"), merge
    merge_in_kernel = merge == "kernel"
    # Loads before the PDL wait pay where a split is a short latency-bound chain (many splits: the
    # small batches). With few splits (batch >= 16 on 8 KV heads) a split streams many tiles and
    # holding a tile across the wait cost 2-19% there (H200: 8B batch 32 at 8,192 tokens, 13.5 ->
    # 16.1 ms per step), so those wait first and pipeline every tile.
    preload = norm_rope is not None and num_splits >= DECODE_PRELOAD_MIN_SPLITS
    block_g = triton.next_power_of_2(group) if merge_in_kernel else 1
    per_step = max(1, DECODE_MERGE_ELEMS // (block_g * head_dim))  # splits merged per step: a power of two
    merge_chunk = min(triton.next_power_of_2(num_splits), 1 << (per_step.bit_length() - 1))
    use_pdl = pdl_enabled(q.device)
    qk_scale = scale * math.log2(math.e)
    options = {}
    if norm_rope is None:  # dummies for the NORM_ROPE arguments, never read
        k, v, q_norm_weight, k_norm_weight, cos_sin, positions, slot_mapping, eps = (q, q, q, q, q, context_lens,
                                                                                     context_lens, 0.0)
    else:
        k, v, q_norm_weight, k_norm_weight, cos_sin, positions, slot_mapping, eps = norm_rope
        # FMA contraction (the rope kernel runs with enable_fp_fusion=False; the attention with
        # it). In 16-bit dtypes a cast stands between every rope product and sum; all that can
        # contract is x*x into the sum of squares and sum/D + eps, both exact products (16-bit
        # squares, a power of two), so the flag changes nothing there (sm_90 SASS of the rope
        # kernel: FFMAs only at those two) and the launch keeps the attention's FMAs, which the
        # flag would split (28 FFMAs: exp2 argument, rescales) and so change the attention. In
        # fp32 the casts are no-ops: the flag is needed for the rope kernel's q and cached k, and
        # the attention's last bits then differ from the unfused kernel's (well within tolerance).
        # The cache is what must agree exactly: prefill writes it through the rope kernel.
        if q.dtype == torch.float32:
            options["enable_fp_fusion"] = False
    _decode_split_kernel[(batch_size, num_kv_heads, num_splits)](
        q, k_cache, v_cache, out, partial_acc, partial_stats, counters, block_tables, context_lens,
        qk_scale, min_tokens, q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        k, v, q_norm_weight, k_norm_weight, cos_sin, positions, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), eps,
        NUM_Q_HEADS=num_q_heads, GROUP=group, BLOCK_H=max(DECODE_MIN_ROWS, triton.next_power_of_2(group)),
        BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_N=DECODE_BLOCK_N, NUM_SPLITS=num_splits,
        BLOCK_G=block_g, MERGE_CHUNK=merge_chunk, MERGE_IN_KERNEL=merge_in_kernel, UPCAST_DOT=upcast_dot,
        USE_PDL=use_pdl, NORM_ROPE=norm_rope is not None, PRELOAD=preload, num_warps=DECODE_NUM_WARPS,
        num_stages=DECODE_NUM_STAGES, launch_pdl=use_pdl, **options)
    if num_splits > 1 and not merge_in_kernel:
        _decode_merge_kernel[(batch_size, num_q_heads)](
            out, partial_acc, partial_stats, context_lens, min_tokens,
            NUM_Q_HEADS=num_q_heads, HEAD_DIM=head_dim, BLOCK_N=DECODE_BLOCK_N, NUM_SPLITS=num_splits,
            MERGE_CHUNK=merge_chunk, USE_PDL=use_pdl, num_warps=DECODE_NUM_WARPS, launch_pdl=use_pdl)
    return out


# ---------------------------------------------------------------- reference and dispatch
def paged_decode_attention_reference(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor, scale: float,
    *, workspace: Tensor | None = None, num_splits: int | None = None, counters: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    out = torch.empty_like(q) if out is None else out
    for seq, ctx_len in enumerate(context_lens.tolist()):
        keys, values = gather_kv(k_cache, v_cache, block_tables[seq], ctx_len)
        q_pos = torch.tensor([ctx_len - 1], device=q.device)
        out[seq: seq + 1] = attend_reference(q[seq: seq + 1], keys, values, q_pos, scale)
    return out



def paged_decode_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor, scale: float,
    *, workspace: Tensor | None = None, num_splits: int | None = None, counters: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    impl = paged_decode_attention_triton if use_triton(q) else paged_decode_attention_reference
    return impl(q, k_cache, v_cache, block_tables, context_lens, scale, workspace=workspace, num_splits=num_splits,
                counters=counters, out=out)


def norm_rope_decode_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, q_norm_weight: Tensor, k_norm_weight: Tensor, cos_sin: Tensor,
    positions: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor, eps: float,
    block_tables: Tensor, context_lens: Tensor, scale: float,
    *, workspace: Tensor | None = None, num_splits: int | None = None, counters: Tensor | None = None,
) -> Tensor:
    q = qk_norm_rope_store_kv_reference(q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions, k_cache, v_cache,
                                        slot_mapping, eps)
    return paged_decode_attention_reference(q, k_cache, v_cache, block_tables, context_lens, scale)


def norm_rope_decode_attention(
    q: Tensor, k: Tensor, v: Tensor, q_norm_weight: Tensor, k_norm_weight: Tensor, cos_sin: Tensor,
    positions: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor, eps: float,
    block_tables: Tensor, context_lens: Tensor, scale: float,
    *, workspace: Tensor | None = None, num_splits: int | None = None, counters: Tensor | None = None,
) -> Tensor:
    """``qk_norm_rope_store_kv`` then ``paged_decode_attention``, for decode (one new token per
    sequence, at position context_lens - 1): q/k/v are the raw [B, Hq, D], [B, Hkv, D], [B, Hkv, D]
    (strided views, head_dim contiguous); the new token's normed+roped k and v go to the cache at
    ``slot_mapping`` (slot < 0: not written) and the attention output [B, Hq, D] comes back.
    The kernel path saves the rope launch and rounds as the two kernels do (see the module
    docstring for the last-bit differences once compiled)."""
    impl = norm_rope_decode_attention_triton if use_triton(q) else norm_rope_decode_attention_reference
    return impl(q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions, k_cache, v_cache, slot_mapping, eps,
                block_tables, context_lens, scale, workspace=workspace, num_splits=num_splits, counters=counters)
