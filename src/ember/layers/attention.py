"""Causal self-attention over the paged KV cache.

Every forward writes the new tokens' K/V into the cache first, then attends from the cache,
so prefill, decode, chunked prefill and prefix caching share one data path. At decode one kernel
does both (``norm_rope_decode_attention``): one launch per layer fewer on the latency-bound
decode step. A step that mixes decode rows with prompt chunks sends its decode rows (the leading
one-token rows) through the decode kernel too: the prefill kernel would give each of them a
64-row query tile per query head, reading its KV once per query head where the decode kernel
reads it once per KV head. (With one split per row: a split count that followed the row count
would compile a kernel variant per count in the middle of a workload.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ember import ops
from ember.ops.decode_attention import norm_rope_decode_attention

# Decode rows of a mixed step take the decode kernel from this many on (one split each: the
# programs are rows x KV heads, 128 and more at Qwen3's 8); fewer stay in the prefill kernel,
# where they cost little.
MIXED_STEP_DECODE_KERNEL_MIN_ROWS = 16


@dataclass
class AttentionMetadata:
    """Where a flat batch of T new tokens from B sequences sits in the KV cache.

    ``slot_mapping[t]``: cache slot token t's K/V go to. ``context_lens[b]``: tokens of
    sequence b in the cache after this step. ``block_tables[b]``: its cache blocks.
    Prefill also carries ``cu_seqlens_q`` (prefix sums of new tokens per sequence),
    ``max_seqlen_q`` and ``num_decode_rows``: how many leading sequences bring exactly one token
    (decode rows, or one-token chunks), which the decode kernel attends; decode has exactly one
    new token per sequence. Decode may bring a
    preallocated ``decode_workspace``, zeroed int32 ``decode_counters`` and their
    ``decode_num_splits`` (see ``ops.decode_attention.decode_workspace_numel`` and
    ``decode_counters_numel``) so that a captured step allocates nothing.
    """

    is_prefill: bool
    slot_mapping: torch.Tensor
    context_lens: torch.Tensor
    block_tables: torch.Tensor
    cu_seqlens_q: torch.Tensor | None = None
    max_seqlen_q: int = 1
    decode_workspace: torch.Tensor | None = None
    decode_num_splits: int | None = None
    decode_counters: torch.Tensor | None = None
    num_decode_rows: int = 0

    def to(self, device: torch.device) -> "AttentionMetadata":
        """The same metadata on another device (for layers placed on another GPU)."""
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return AttentionMetadata(
            self.is_prefill,
            move(self.slot_mapping),
            move(self.context_lens),
            move(self.block_tables),
            move(self.cu_seqlens_q),
            self.max_seqlen_q,
            None,  # a workspace serves one device; on the next, the op allocates its own per call
            self.decode_num_splits,
            None,  # the counters likewise
            self.num_decode_rows,
        )


class PagedAttention(nn.Module):
    """q/k RMSNorm + RoPE + KV-cache write, then attention over the cache (one op at decode).

    The runner binds ``k_cache``/``v_cache`` (``[num_blocks, block_size, kv_heads, head_dim]``)
    after it has sized the cache; the shared ``cos_sin`` table comes from the model.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.eps = eps
        self.scale = head_dim**-0.5
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_norm_weight: torch.Tensor,
        k_norm_weight: torch.Tensor,
        cos_sin: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        tokens = q.shape[0]
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        if meta.is_prefill:
            q = ops.qk_norm_rope_store_kv(
                q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions,
                self.k_cache, self.v_cache, meta.slot_mapping, self.eps,
            )
            out = torch.empty_like(q)
            d = meta.num_decode_rows if meta.num_decode_rows >= MIXED_STEP_DECODE_KERNEL_MIN_ROWS else 0
            if d:
                ops.paged_decode_attention(q[:d], self.k_cache, self.v_cache, meta.block_tables[:d],
                                           meta.context_lens[:d], self.scale, num_splits=1, out=out[:d])
            ops.paged_prefill_attention(  # the rest: the prompt chunks
                q, self.k_cache, self.v_cache, meta.cu_seqlens_q, meta.context_lens, meta.block_tables,
                self.scale, meta.max_seqlen_q, out=out, first_seq=d,
            )
        else:  # the same two steps in one kernel
            out = norm_rope_decode_attention(
                q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions,
                self.k_cache, self.v_cache, meta.slot_mapping, self.eps,
                meta.block_tables, meta.context_lens, self.scale,
                workspace=meta.decode_workspace, num_splits=meta.decode_num_splits,
                counters=meta.decode_counters,
            )
        return out.reshape(tokens, self.num_heads * self.head_dim)
