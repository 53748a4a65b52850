"""silu_mul: kernel against reference, reference against HF's Qwen3MLP (act_fn(gate) * up).

Kernels run on CUDA when there is a GPU, else on CPU tensors in the Triton interpreter.
Tolerances (kernel vs reference): fp32 1e-5 relative; fp16 2 ulp (rtol 2**-9: a 1-ulp change of
silu(gate), times up, can round to 2 ulp) with under 1% of elements differing at all, which checks
that silu is rounded before the multiply as HF does; bf16 likewise on GPU (rtol 2**-6), but 4 ulp
(rtol 2**-5) in the interpreter, which truncates fp32 -> bf16 casts instead of rounding.
"""


import torch

# tests/conftest.py sets TRITON_INTERPRET=1 without a GPU, before ember.ops is imported.

import pytest
from kernel_check import DEVICE, DTYPES
from kernel_check import assert_kernel_close as check
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP

from ember.ops.activation import silu_mul, silu_mul_reference, silu_mul_triton

def assert_kernel_close(actual, expected):
    check(actual, expected, atol=1e-6)


def make_gate_up(num_tokens, intermediate_size, dtype, device=DEVICE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Scale 3 reaches silu's tails (large |gate|), where exp under/overflows.
    return (3 * torch.randn(num_tokens, 2 * intermediate_size, generator=gen)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("intermediate_size", [96, 1000, 1024])
@pytest.mark.parametrize("num_tokens", [1, 7, 33])
def test_kernel_matches_reference(num_tokens, intermediate_size, dtype):
    x = make_gate_up(num_tokens, intermediate_size, dtype, seed=num_tokens + intermediate_size)
    assert_kernel_close(silu_mul_triton(x), silu_mul_reference(x))


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # numpy under the interpreter; inf is fine
def test_extreme_gates():
    x = torch.tensor([[-1e4, -88.0, -20.0, 0.0, 20.0, 1e4, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], device=DEVICE)
    out = silu_mul_triton(x)
    assert torch.isfinite(out).all()
    assert_kernel_close(out, silu_mul_reference(x))


def test_strided_rows_and_empty_batch():
    wide = make_gate_up(5, 300, torch.float16)
    x = wide[:, :200]  # [5, 200] with row stride 600
    assert_kernel_close(silu_mul_triton(x), silu_mul_reference(x))
    assert silu_mul_triton(wide[:0]).shape == (0, 300)


def test_reference_matches_hf_mlp_bit_for_bit_in_bf16():
    config = Qwen3Config(hidden_size=64, intermediate_size=96, hidden_act="silu")
    torch.manual_seed(0)
    mlp = Qwen3MLP(config).to(torch.bfloat16)
    hidden = torch.randn(9, 64).to(torch.bfloat16)
    with torch.no_grad():
        gate, up = mlp.gate_proj(hidden), mlp.up_proj(hidden)
        hf = mlp.act_fn(gate) * up  # the inside of Qwen3MLP.forward, before down_proj
        assert torch.equal(silu_mul_reference(torch.cat((gate, up), dim=-1)), hf)
        assert torch.equal(mlp.down_proj(hf), mlp(hidden))  # ...which is really what forward computes


def test_dispatcher():
    x = make_gate_up(3, 96, torch.bfloat16)
    assert torch.equal(silu_mul(x), (silu_mul_triton if DEVICE == "cuda" else silu_mul_reference)(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_tokens", [1, 257, 2048])
def test_kernel_on_gpu_at_qwen3_shapes(num_tokens, dtype):
    x = make_gate_up(num_tokens, 12288, dtype, device="cuda")
    assert_kernel_close(silu_mul(x), silu_mul_reference(x))
