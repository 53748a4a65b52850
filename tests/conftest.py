"""Shared fixtures: tiny random-weight Qwen3 checkpoints in Hugging Face format.

Every checkpoint keeps the full real vocabulary and tokenizer (tests/data/qwen3-tokenizer)
and shrinks the rest, so HF transformers and Ember can load the same folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter. The choice is made when a kernel is
# decorated, i.e. when ember.ops is first imported, so it must be set before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

    import triton.runtime.interpreter as _interpreter

    # triton 3.6's interpreter turns scalar tensors into ints with int(array of shape (1,)), which
    # numpy >= 2.4 rejects, so `range(runtime_bound)` in a kernel fails (triton-lang/triton#9171).
    # Same one-line fix as upstream: squeeze first.
    _patch_lang_tensor = _interpreter._patch_lang_tensor

    def _patch_lang_tensor_numpy24(tensor, scope):
        _patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    _interpreter._patch_lang_tensor = _patch_lang_tensor_numpy24

from ember.tools.random_checkpoint import qwen3_config, write_random_checkpoint

TOKENIZER_DIR = Path(__file__).parent / "data" / "qwen3-tokenizer"

TINY = dict(
    hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=32, max_position_embeddings=2048, torch_dtype="float32",
)

VARIANTS = {
    "tied": dict(tie_word_embeddings=True),
    "untied": dict(tie_word_embeddings=False, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2),
    "sharded": dict(tie_word_embeddings=False, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    "yarn": dict(
        tie_word_embeddings=True, max_position_embeddings=8192,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},
    ),
}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """name -> folder of each tiny checkpoint variant (written once per session)."""
    root = tmp_path_factory.mktemp("checkpoints")
    folders = {}
    for i, (name, overrides) in enumerate(VARIANTS.items()):
        cfg = qwen3_config(**{**TINY, **overrides})
        folders[name] = write_random_checkpoint(
            root / name, cfg, TOKENIZER_DIR, num_shards=3 if name == "sharded" else 1, seed=i
        )
    return folders


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoints) -> Path:
    return tiny_checkpoints["tied"]
