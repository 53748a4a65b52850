"""Sizing and allocation of the paged KV cache."""

from __future__ import annotations

import torch

from ember.config import ModelConfig

GiB = 1 << 30


def kv_bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block takes across all layers, K and V."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * block_size * cfg.num_key_value_heads * cfg.head_dim * itemsize


def activation_reserve_bytes(cfg: ModelConfig, max_tokens: int, max_seqs: int, dtype: torch.dtype) -> int:
    """A generous bound on the transient memory of one forward pass and sampling.

    Per token: the qkv and gate_up projections, the attention output and a few hidden-size
    temporaries; per sequence: fp32 logits and the sampling/penalty work tensors.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_token = (cfg.q_size + 2 * cfg.kv_size + 3 * cfg.intermediate_size + 6 * cfg.hidden_size) * itemsize
    per_seq = 4 * cfg.vocab_size * 4
    return 2 * (max_tokens * per_token + max_seqs * per_seq) + GiB // 2


def num_kv_blocks(
    cfg: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    block_size: int,
    max_model_len: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    gpu_memory_utilization: float,
    cpu_kv_cache_bytes: int = 4 * GiB,
) -> int:
    """How many blocks to allocate: what memory allows, never more than could ever be used."""
    per_block = kv_bytes_per_block(cfg, block_size, dtype)
    blocks_per_seq = -(-max_model_len // block_size)
    useful = max_num_seqs * blocks_per_seq
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        used = total - free  # our weights and anything else on the GPU
        reserve = activation_reserve_bytes(cfg, max_num_batched_tokens, max_num_seqs, dtype)
        budget = int(total * gpu_memory_utilization) - used - reserve
    else:
        budget = cpu_kv_cache_bytes
    return max(0, min(useful, budget // per_block))


def allocate_kv_cache(
    cfg: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, devices: list[torch.device]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer K and V caches ``[num_blocks, block_size, kv_heads, head_dim]``, on each layer's device.

    Zeroed once so that never-written slots hold finite values.
    """
    shape = (num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
    k = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
    v = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
    return k, v
