"""config.json parsed into a typed model config.

Only what the Qwen3 dense decoder needs is kept; everything is validated here so that the
model code can trust it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ember.errors import ConfigError

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM",)

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def parse_dtype(name: str | torch.dtype | None, default: torch.dtype = torch.bfloat16) -> torch.dtype:
    """Map 'bfloat16'/'float16'/'float32' (and 'auto'/None -> default) to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name is None or name == "auto":
        return default
    key = str(name).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise ConfigError(f"unsupported dtype {name!r}; use one of auto, bfloat16, float16, float32")
    return _DTYPES[key]


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    tie_word_embeddings: bool
    torch_dtype: torch.dtype
    attention_bias: bool = False
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        archs = raw.get("architectures") or []
        arch = archs[0] if isinstance(archs, list) and archs else raw.get("model_type", "unknown")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"{source}: architecture {arch!r} is not supported; Ember supports "
                + ", ".join(SUPPORTED_ARCHITECTURES)
            )

        def need_int(key: str, minimum: int = 1) -> int:
            value = raw.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"{source}: {key!r} must be an integer >= {minimum}, got {value!r}")
            return value

        hidden = need_int("hidden_size")
        heads = need_int("num_attention_heads")
        kv_heads = raw.get("num_key_value_heads", heads)
        if not isinstance(kv_heads, int) or kv_heads < 1 or heads % kv_heads:
            raise ConfigError(
                f"{source}: num_key_value_heads={kv_heads!r} must divide num_attention_heads={heads}"
            )
        head_dim = raw.get("head_dim") or hidden // heads
        if not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
            raise ConfigError(f"{source}: head_dim must be an even positive integer, got {head_dim!r}")

        # transformers 5 writes rope_parameters (with rope_theta inside); older files rope_scaling.
        rope_params = raw.get("rope_parameters") or {}
        rope_theta = float(raw.get("rope_theta") or rope_params.get("rope_theta") or 10000.0)
        rope_scaling = raw.get("rope_scaling") or None
        if rope_scaling is None and rope_params:
            kind = rope_params.get("rope_type", rope_params.get("type", "default"))
            rope_scaling = None if kind == "default" else dict(rope_params)
        if rope_scaling is not None:
            if not isinstance(rope_scaling, dict):
                raise ConfigError(f"{source}: rope_scaling must be an object or null")
            kind = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
            if kind not in ("default", "linear", "yarn"):
                raise ConfigError(f"{source}: rope_scaling type {kind!r} is not supported (default, linear, yarn)")
            if kind == "default":
                rope_scaling = None
            elif not isinstance(rope_scaling.get("factor"), (int, float)) or rope_scaling["factor"] <= 0:
                raise ConfigError(f"{source}: rope_scaling needs a positive 'factor'")

        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
        dtype_name = raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"
        return cls(
            architecture=arch,
            vocab_size=need_int("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need_int("intermediate_size"),
            num_hidden_layers=need_int("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            max_position_embeddings=need_int("max_position_embeddings"),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            torch_dtype=parse_dtype(dtype_name),
            attention_bias=bool(raw.get("attention_bias", False)),
            eos_token_ids=eos_ids,
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> "ModelConfig":
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise ConfigError(f"{folder}: no config.json (is this a Hugging Face model folder?)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(raw, source=str(path))


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling defaults from generation_config.json (None where the file says nothing)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_folder(cls, folder: str | Path) -> "GenerationDefaults":
        path = Path(folder) / "generation_config.json"
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
        sampling = raw.get("do_sample", True)

        def num(key):
            value = raw.get(key)
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        return cls(
            temperature=num("temperature") if sampling else 0.0,
            top_p=num("top_p"),
            top_k=num("top_k"),
            min_p=num("min_p"),
            repetition_penalty=num("repetition_penalty"),
            eos_token_ids=eos_ids,
        )
