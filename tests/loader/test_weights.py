"""Filling a model from a checkpoint: every tensor accounted for, errors name tensor and file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ember.config import ModelConfig
from ember.errors import WeightsError
from ember.loader.weights import build_model, init_dummy_weights, load_checkpoint_weights


def load(folder):
    cfg = ModelConfig.from_folder(folder)
    model = build_model(cfg, torch.float32, torch.device("cpu"))
    load_checkpoint_weights(model, folder, progress=False)
    return model


def edit_weights(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors")
    return dst


def test_packed_projections_hold_the_checkpoint_tensors(tiny_checkpoint):
    model = load(tiny_checkpoint)
    tensors = load_file(tiny_checkpoint / "model.safetensors")
    attn = model.model.layers[1].self_attn
    q, k, v = attn.qkv_proj.weight.split([attn.q_size, attn.kv_size, attn.kv_size])
    assert torch.equal(q, tensors["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(v, tensors["model.layers.1.self_attn.v_proj.weight"])
    gate, up = model.model.layers[0].mlp.gate_up_proj.weight.chunk(2)
    assert torch.equal(up, tensors["model.layers.0.mlp.up_proj.weight"])
    assert model.lm_head is None  # tied: the embedding is the LM head


def test_sharded_checkpoint_loads(tiny_checkpoints):
    load(tiny_checkpoints["sharded"])


def test_missing_tensor(tiny_checkpoint, tmp_path):
    folder = edit_weights(tiny_checkpoint, tmp_path / "m", lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))
    with pytest.raises(WeightsError, match="missing tensor.*model.layers.0.mlp.up_proj.weight"):
        load(folder)


def test_unexpected_tensor(tiny_checkpoint, tmp_path):
    def add(t):
        t["model.layers.9.self_attn.q_proj.weight"] = torch.ones(2, 2)

    folder = edit_weights(tiny_checkpoint, tmp_path / "u", add)
    with pytest.raises(WeightsError, match=r"model.safetensors: unexpected tensor 'model.layers.9"):
        load(folder)


def test_misshaped_tensor(tiny_checkpoint, tmp_path):
    def shrink(t):
        t["model.norm.weight"] = t["model.norm.weight"][:-1].clone()

    folder = edit_weights(tiny_checkpoint, tmp_path / "s", shrink)
    with pytest.raises(WeightsError, match=r"model.safetensors: tensor 'model.norm.weight' has shape \[63\], expected \[64\]"):
        load(folder)


def test_integer_weights_rejected(tiny_checkpoint, tmp_path):
    def quantize(t):
        t["model.norm.weight"] = t["model.norm.weight"].to(torch.int8)

    folder = edit_weights(tiny_checkpoint, tmp_path / "q", quantize)
    with pytest.raises(WeightsError, match="quantized"):
        load(folder)


def test_dummy_weights_are_random_not_zero(tiny_checkpoint):
    cfg = ModelConfig.from_folder(tiny_checkpoint)
    model = build_model(cfg, torch.float32, torch.device("cpu"))
    init_dummy_weights(model, seed=0)
    for name, p in model.named_parameters():
        assert p.std() > 0, name
        assert torch.isfinite(p).all(), name
    norm = model.model.norm.weight
    assert abs(norm.mean().item() - 1) < 0.1


def test_dummy_checkpoint_config_only(tiny_checkpoint, tmp_path):
    """--load-format dummy needs only config.json and the tokenizer, no weights."""
    from ember import LLM, SamplingParams

    folder = tmp_path / "noweights"
    folder.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_checkpoint / f, folder / f)
    llm = LLM(str(folder), load_format="dummy", device="cpu", max_model_len=64, max_num_seqs=1, progress=False)
    out = llm.generate("hi", SamplingParams(temperature=0, max_tokens=3, ignore_eos=True), use_tqdm=False)[0]
    assert len(out.token_ids) == 3
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
