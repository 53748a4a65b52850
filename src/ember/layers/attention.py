"""Causal self-attention over the paged KV cache.

Every forward writes the new tokens' K/V into the cache first, then attends from the cache,
so prefill, decode and (later) chunked prefill and prefix caching share one data path. At decode
one kernel does both (``norm_rope_decode_attention``): one launch per layer fewer on the
latency-bound decode step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ember import ops
from ember.ops.decode_attention import norm_rope_decode_attention


@dataclass
class AttentionMetadata:
    """Where a flat batch of T new tokens from B sequences sits in the KV cache.

    ``slot_mapping[t]``: cache slot token t's K/V go to. ``context_lens[b]``: tokens of
    sequence b in the cache after this step. ``block_tables[b]``: its cache blocks.
    Prefill also carries ``cu_seqlens_q`` (prefix sums of new tokens per sequence) and
    ``max_seqlen_q``; decode has exactly one new token per sequence. Decode may bring a
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
            out = ops.paged_prefill_attention(
                q, self.k_cache, self.v_cache, meta.cu_seqlens_q, meta.context_lens,
                meta.block_tables, self.scale, meta.max_seqlen_q,
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
