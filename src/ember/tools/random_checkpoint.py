"""Write Hugging Face-format Qwen3 folders with random weights.

Tests build tiny ones; benchmarks and GPU checks build real shapes so that Ember and HF
transformers load identical weights. Never all zeros: N(0, 0.02) matrices, N(1, 0.05) norms.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

# Shapes of the published Qwen3 dense models (config.json of each).
QWEN3_SHAPES = {
    "0.6B": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, tie_word_embeddings=True),
    "1.7B": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, tie_word_embeddings=True),
    "4B": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "8B": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
    "14B": dict(hidden_size=5120, intermediate_size=17408, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=8, tie_word_embeddings=False),
    "32B": dict(hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64,
                num_key_value_heads=8, tie_word_embeddings=False),
}


def qwen3_config(**overrides) -> dict:
    """A complete Qwen3 config.json dict; defaults are Qwen3-0.6B's, ``overrides`` win."""
    cfg = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 40960,
        "max_window_layers": 28,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
        "torch_dtype": "bfloat16",
        **QWEN3_SHAPES["0.6B"],
    }
    cfg.update(overrides)
    return cfg


def qwen3_tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, i, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "model.norm.weight": (h,)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "self_attn.q_norm.weight": (d,),
            p + "self_attn.k_norm.weight": (d,),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        })
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (cfg["vocab_size"], h)
    return shapes


def write_config_folder(folder: str | Path, config: dict, tokenizer_dir: str | Path | None = None) -> Path:
    """config.json and the tokenizer files from ``tokenizer_dir``, no weights: a folder for
    ``--load-format dummy`` (benchmarks at real shapes). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            src = Path(tokenizer_dir) / name
            if src.exists():
                shutil.copy(src, folder / name)
    return folder


def write_random_checkpoint(
    folder: str | Path,
    config: dict,
    tokenizer_dir: str | Path | None = None,
    num_shards: int = 1,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
) -> Path:
    """Write config.json, random weights (1 file or ``num_shards`` with an index) and the
    tokenizer files from ``tokenizer_dir`` into ``folder``; return the folder."""
    folder = write_config_folder(folder, config, tokenizer_dir)
    dtype = dtype or getattr(torch, config.get("torch_dtype", "bfloat16"))

    gen = torch.Generator(device=device).manual_seed(seed)
    shapes = qwen3_tensor_shapes(config)
    names = list(shapes)
    shards = [names[k::num_shards] for k in range(num_shards)]
    weight_map = {}
    for k, shard in enumerate(shards):
        tensors = {}
        for name in shard:
            t = torch.empty(shapes[name], device=device, dtype=torch.float32)
            if name.endswith("norm.weight"):
                t.normal_(1.0, 0.05, generator=gen)
            else:
                t.normal_(0.0, 0.02, generator=gen)
            tensors[name] = t.to(dtype).cpu()
        file = "model.safetensors" if num_shards == 1 else f"model-{k + 1:05d}-of-{num_shards:05d}.safetensors"
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    if num_shards > 1:
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder
