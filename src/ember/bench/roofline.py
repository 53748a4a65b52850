"""Model shape and the two ceilings' rooflines: decode is bandwidth-bound, prefill FLOP-bound.

Decode: a step reads every weight once plus the KV cache of every sequence, so its floor is
those bytes over the measured copy rate. Prefill: 2 FLOPs per parameter per token plus causal
attention, over the measured matmul rate. Both use the formulas as written in issue #3 so that
figures stay comparable between runs (an untied input embedding is counted in full although a
decode step reads only a few of its rows, and prefill counts the LM head on every token).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ember.config import ModelConfig


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    params: int
    weight_bytes: int
    dtype: str
    dtype_bytes: int

    @classmethod
    def from_model(cls, cfg: ModelConfig, model: torch.nn.Module, dtype: torch.dtype) -> "ModelShape":
        # Tied embeddings are one Parameter, so counting unique tensors counts them once.
        unique = {id(p): p for p in model.parameters()}.values()
        return cls(
            layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, intermediate=cfg.intermediate_size,
            heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
            vocab=cfg.vocab_size, tied_embeddings=cfg.tie_word_embeddings,
            params=sum(p.numel() for p in unique),
            weight_bytes=sum(p.numel() * p.element_size() for p in unique),
            dtype=str(dtype).removeprefix("torch."), dtype_bytes=torch.empty((), dtype=dtype).element_size(),
        )

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes  # K and V

    def as_dict(self) -> dict:
        return asdict(self)


def decode_roofline(shape: ModelShape, batch_size: int, prompt_len: int, gen_len: int, copy_rate: float) -> dict:
    """Bytes one decode step reads, and the tok/s that reading them at ``copy_rate`` allows."""
    # Decode steps run at contexts prompt_len+1 .. prompt_len+gen_len-1; their mean:
    mean_context = prompt_len + gen_len / 2
    step_bytes = shape.weight_bytes + batch_size * mean_context * shape.kv_bytes_per_token()
    step_s = step_bytes / copy_rate
    return {
        "bytes_per_step": int(step_bytes),
        "mean_context": mean_context,
        "ms_per_token": 1000 * step_s,
        "tok_s_per_seq": 1 / step_s,
        "tok_s": batch_size / step_s,
    }


def prefill_flops(shape: ModelShape, batch_size: int, prompt_len: int) -> float:
    dense = 2 * shape.params * batch_size * prompt_len
    # QK^T and PV, 2 FLOPs per multiply-add each, over the causal half of each prompt's ctx².
    attention = 4 * shape.layers * shape.heads * shape.head_dim * batch_size * prompt_len**2 / 2
    return dense + attention


def prefill_roofline(shape: ModelShape, batch_size: int, prompt_len: int, matmul_rate: float) -> dict:
    flops = prefill_flops(shape, batch_size, prompt_len)
    seconds = flops / matmul_rate
    return {"flops": flops, "ttft_ms": 1000 * seconds, "tok_s": batch_size * prompt_len / seconds}
