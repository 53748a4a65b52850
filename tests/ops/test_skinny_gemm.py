"""The skinny GEMM kernel's own parts (ops/skinny_gemm.py): any row stride, split-K bookkeeping,
and the config lookup (table, then heuristic). Its arithmetic is tested through the ops that use
it, in test_linear.py."""

import importlib

import pytest
import torch
from test_linear import CONFIGS, assert_gemm_close, make

from ember.ops.linear import linear_reference, linear_triton
from ember.ops.skinny_gemm import SKINNY_MAX_M, SkinnyConfig, skinny_config
from ember.tools.random_checkpoint import QWEN3_SHAPES

skinny = importlib.import_module("ember.ops.skinny_gemm")


@pytest.mark.parametrize("config", [SkinnyConfig(16, 64, 2, 4, 2, True), SkinnyConfig(8, 64, 4, 4, 1, False)])
def test_even_k_and_strided_rows(config):
    wide = make((5, 512), torch.float16)
    x = wide[:, :256]  # row stride 512: the kernel takes any row stride
    w = make((64, 256), torch.float16, scale=0.1, seed=1)
    assert_gemm_close(linear_triton(x, w, config=config), linear_reference(x, w))


def test_split_k_resets_its_counters_and_is_deterministic():
    x, w = make((4, 200), torch.float32), make((72, 200), torch.float32, seed=1)
    first = linear_triton(x, w, config=CONFIGS["dot-split"])
    assert torch.equal(first, linear_triton(x, w, config=CONFIGS["dot-split"]))
    _, counters = skinny._workspaces[x.device]
    assert not counters.any()


def test_skinny_config_table_and_heuristic(monkeypatch):
    assert skinny_config(SKINNY_MAX_M + 1, 4096, 4096) is None
    monkeypatch.setitem(skinny.SKINNY_TABLE, ("linear", 4096, 4096, 8), (32, 256, 1, 4, 3, True))
    assert skinny_config(5, 4096, 4096) == SkinnyConfig(32, 256, 1, 4, 3, True)  # M bucket 8
    assert skinny_config(9, 4096, 4096) != SkinnyConfig(32, 256, 1, 4, 3, True)
    # The heuristic's configs at every Qwen3 projection fit the split-K workspace and divide K evenly.
    for shape in QWEN3_SHAPES.values():
        h, i = shape["hidden_size"], shape["intermediate_size"]
        q, kv = shape["num_attention_heads"] * 128, shape["num_key_value_heads"] * 128
        for n, k in [(q + 2 * kv, h), (h, q), (2 * i, h), (h, i)]:
            for m in (1, 16):
                cfg = skinny._heuristic_config(m, n, k)
                blocks = -(-n // cfg.block_n)
                assert k % (cfg.block_k * cfg.split_k) == 0, (n, k, cfg)
                assert cfg.split_k * blocks * cfg.block_n * 16 <= skinny._WORKSPACE_FLOATS
                assert blocks * cfg.split_k >= 128, (n, k, cfg)
