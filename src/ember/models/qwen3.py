"""The Qwen3 dense decoder, written to read like the math.

    h = embed(tokens)                  # h: the residual stream
    for each layer:
        q, k, v = rmsnorm(h) Wqkv
        q, k = rope(rmsnorm_head(q)), rope(rmsnorm_head(k));  cache <- k, v
        h = h + attention(q, cache) Wo
        g, u = rmsnorm(h) Wgate_up
        h = h + (silu(g) * u) Wdown
    logits = rmsnorm(h) Wlm            # only at the rows that need a next token

At decode the skinny GEMM does the rest in its epilogue: each residual add, with the row
statistics the next rmsnorm needs, runs in the projection before it (``forward_add``), the
rmsnorm (its weight folded into the next projection at load time, ``fold_norms``) as a per-row
scale of the projection after it, and silu * mul in gate_up's epilogue (``forward_normed``):
a layer is its four projections and its attention. Where a GEMM is cuBLAS's, the add is left
pending in the stream (``ops.ResidualStream``) and done by the next norm's kernel.

Each layer may sit on its own device (``place_layers``); hidden states follow the layers.
"""

from __future__ import annotations

import torch
from torch import nn

from ember import ops
from ember.config import ModelConfig
from ember.layers.attention import AttentionMetadata, PagedAttention
from ember.layers.linear import Linear, PackedLinear
from ember.layers.norm import RMSNorm
from ember.ops.rope import build_rope_cache


class Qwen3Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        self.qkv_proj = PackedLinear(
            cfg.hidden_size, [cfg.q_size, cfg.kv_size, cfg.kv_size], bias=cfg.attention_bias
        )
        self.o_proj = Linear(cfg.q_size, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.attn = PagedAttention(
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
        )

    def forward(self, qkv, positions, cos_sin, meta: AttentionMetadata):
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return self.attn(q, k, v, self.q_norm.weight, self.k_norm.weight, cos_sin, positions, meta)


class Qwen3MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = PackedLinear(cfg.hidden_size, [cfg.intermediate_size] * 2)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size)


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Qwen3Attention(cfg)
        self.mlp = Qwen3MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, stream: ops.ResidualStream, positions, cos_sin, meta) -> ops.ResidualStream:
        attn, mlp = self.self_attn, self.mlp
        qkv, h = attn.qkv_proj.forward_normed(stream, self.input_layernorm)
        stream = attn.o_proj.forward_add(attn(qkv, positions, cos_sin, meta), h)
        act, h = mlp.gate_up_proj.forward_normed(stream, self.post_attention_layernorm, silu_mul=True)
        return mlp.down_proj.forward_add(act, h)


class Qwen3Model(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size), requires_grad=False)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen3ForCausalLM(nn.Module):
    """Checkpoint names map onto this module tree (see ``checkpoint_name_map``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Qwen3Model(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size)
        self.cos_sin: torch.Tensor | None = None  # fp32 RoPE table, made by init_rope_cache

    def init_rope_cache(self, device: torch.device) -> None:
        cfg = self.config
        self.cos_sin = build_rope_cache(
            cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling, device=device
        )

    # ----- forward -------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Final hidden states (normed) of every token in the flat batch."""
        stream = ops.ResidualStream(ops.embedding(input_ids, self.model.embed_tokens))
        cos_sin, device = self.cos_sin, stream.hidden.device
        for layer in self.model.layers:
            layer_device = layer.input_layernorm.weight.device
            if layer_device != device:  # pipeline split: hand the activations over
                stream = self._stream_to(stream, layer_device)
                device, positions, meta = layer_device, positions.to(layer_device), meta.to(layer_device)
                cos_sin = cos_sin.to(device)
            stream = layer(stream, positions, cos_sin, meta)
        h, residual, _ = self._stream_to(stream, self.model.norm.weight.device)
        return self.model.norm(h) if residual is None else self.model.norm(h, residual)[0]

    @staticmethod
    def _stream_to(stream: ops.ResidualStream, device: torch.device) -> ops.ResidualStream:
        """The stream on another device; its row statistics stay behind (the next norm recomputes)."""
        if stream.hidden.device == device:
            return stream
        residual = None if stream.residual is None else stream.residual.to(device)
        return ops.ResidualStream(stream.hidden.to(device), residual)

    @property
    def logits_dtype(self) -> torch.dtype:
        return (self.model.embed_tokens if self.lm_head is None else self.lm_head.weight).dtype

    def compute_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Logits in the model's dtype, as HF's lm_head returns them (samplers upcast on read);
        into ``out`` (a [rows, vocab] buffer) when given."""
        weight = self.model.embed_tokens if self.lm_head is None else self.lm_head.weight
        return ops.lm_head(hidden.to(weight.device), weight, out=out)

    # ----- weights -------------------------------------------------------------------------
    def checkpoint_name_map(self) -> dict[str, tuple[str, int | None]]:
        """Checkpoint tensor name -> (parameter name here, packed shard index or None)."""
        names: dict[str, tuple[str, int | None]] = {
            "model.embed_tokens.weight": ("model.embed_tokens", None),
            "model.norm.weight": ("model.norm.weight", None),
        }
        if self.lm_head is not None:
            names["lm_head.weight"] = ("lm_head.weight", None)
        for i in range(len(self.model.layers)):
            p = f"model.layers.{i}."
            for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                names[f"{p}self_attn.{proj}.weight"] = (f"{p}self_attn.qkv_proj.weight", j)
                if self.config.attention_bias:
                    names[f"{p}self_attn.{proj}.bias"] = (f"{p}self_attn.qkv_proj.bias", j)
            for j, proj in enumerate(("gate_proj", "up_proj")):
                names[f"{p}mlp.{proj}.weight"] = (f"{p}mlp.gate_up_proj.weight", j)
            for name in (
                "self_attn.o_proj.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight",
                "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
            ):
                names[p + name] = (p + name, None)
        return names

    @torch.no_grad()
    def fold_norms(self) -> None:
        """Fold each layer's two RMSNorm weights into the projections they feed (qkv, gate_up), so
        that decode runs each norm as a per-row scale in its projection's epilogue
        (``Linear.forward_normed``). Called once after the weights are loaded; the final norm stays
        (the LM head may be the tied embedding)."""
        for layer in self.model.layers:
            layer.self_attn.qkv_proj.fold_norm(layer.input_layernorm)
            layer.mlp.gate_up_proj.fold_norm(layer.post_attention_layernorm)

    def bind_kv_cache(self, k_caches: list[torch.Tensor], v_caches: list[torch.Tensor]) -> None:
        for layer, k, v in zip(self.model.layers, k_caches, v_caches):
            layer.self_attn.attn.k_cache = k
            layer.self_attn.attn.v_cache = v
