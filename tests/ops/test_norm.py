"""rms_norm / add_rms_norm: kernels against references, references against HF's Qwen3RMSNorm.

Kernels run on CUDA when there is a GPU, else on CPU tensors in the Triton interpreter.
Tolerances (kernel vs reference): fp32 1e-5 relative; fp16 2 ulp (rtol 2**-9: a 1-ulp change of
the normalised value, times a weight above 1, can round to 2 ulp) and under 1% of elements may
differ at all, which checks that the kernel rounds where HF does; bf16 likewise on GPU (rtol 2**-6),
but 4 ulp (rtol 2**-5) in the interpreter, which truncates fp32 -> bf16 casts instead of rounding.
"""


import torch

# tests/conftest.py sets TRITON_INTERPRET=1 without a GPU, before ember.ops is imported.

import pytest
from kernel_check import DEVICE, DTYPES, ROUNDS_TO_NEAREST
from kernel_check import assert_kernel_close as check
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from ember.ops.norm import (
    add_rms_norm,
    add_rms_norm_reference,
    add_rms_norm_triton,
    rms_norm,
    rms_norm_reference,
    rms_norm_triton,
)

EPS = 1e-6


def assert_kernel_close(actual, expected):
    check(actual, expected, atol=1e-5)


def make_inputs(num_tokens, hidden_size, dtype, device=DEVICE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, hidden_size, generator=gen)
    residual = 4 * torch.randn(num_tokens, hidden_size, generator=gen)
    weight = 1 + 0.2 * torch.randn(hidden_size, generator=gen)
    return [t.to(device=device, dtype=dtype) for t in (x, residual, weight)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden_size", [96, 1000, 1024])
@pytest.mark.parametrize("num_tokens", [1, 7, 33])
def test_rms_norm_kernel_matches_reference(num_tokens, hidden_size, dtype):
    x, _, weight = make_inputs(num_tokens, hidden_size, dtype, seed=hidden_size + num_tokens)
    assert_kernel_close(rms_norm_triton(x, weight, EPS), rms_norm_reference(x, weight, EPS))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden_size", [96, 1000, 1024])
@pytest.mark.parametrize("num_tokens", [1, 7, 33])
def test_add_rms_norm_kernel_matches_reference(num_tokens, hidden_size, dtype):
    x, residual, weight = make_inputs(num_tokens, hidden_size, dtype, seed=hidden_size + num_tokens)
    x_before, residual_before = x.clone(), residual.clone()
    out, residual_out = add_rms_norm_triton(x, residual, weight, EPS)
    expected_out, expected_residual = add_rms_norm_reference(x, residual, weight, EPS)
    # The sum is one rounding of an exact fp32 sum: identical, bar the interpreter's bf16 truncation.
    if dtype in ROUNDS_TO_NEAREST or dtype == torch.float32:
        assert torch.equal(residual_out, expected_residual)
    assert_kernel_close(residual_out, expected_residual)
    assert_kernel_close(out, expected_out)
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before)  # new tensors, inputs untouched


def test_kernels_handle_strided_rows_and_empty_batches():
    x, residual, weight = make_inputs(5, 192, torch.float16)
    x_view, residual_view, weight = x[:, :96], residual[:, 96:], weight[:96]  # row stride 192
    assert_kernel_close(rms_norm_triton(x_view, weight, EPS), rms_norm_reference(x_view, weight, EPS))
    out, residual_out = add_rms_norm_triton(x_view, residual_view, weight, EPS)
    expected_out, expected_residual = add_rms_norm_reference(x_view, residual_view, weight, EPS)
    assert torch.equal(residual_out, expected_residual)
    assert_kernel_close(out, expected_out)
    assert rms_norm_triton(x[:0, :96], weight, EPS).shape == (0, 96)
    assert [t.shape for t in add_rms_norm_triton(x[:0, :96], residual[:0, :96], weight, EPS)] == [(0, 96)] * 2


@pytest.mark.parametrize("hidden_size", [128, 1024])
def test_references_match_hf_bit_for_bit_in_bf16(hidden_size):
    x, residual, weight = make_inputs(9, hidden_size, torch.bfloat16, device="cpu", seed=1)
    hf_norm = Qwen3RMSNorm(hidden_size, eps=EPS).to(torch.bfloat16)
    with torch.no_grad():
        hf_norm.weight.copy_(weight)
        assert torch.equal(rms_norm_reference(x, weight, EPS), hf_norm(x))
        # Qwen3DecoderLayer: hidden_states = residual + hidden_states; post_attention_layernorm(hidden_states)
        hf_residual = residual + x
        out, residual_out = add_rms_norm_reference(x, residual, weight, EPS)
        assert torch.equal(residual_out, hf_residual)
        assert torch.equal(out, hf_norm(hf_residual))


def test_dispatchers():
    x, residual, weight = make_inputs(3, 96, torch.bfloat16)
    kernels = DEVICE == "cuda"
    assert torch.equal(rms_norm(x, weight, EPS), (rms_norm_triton if kernels else rms_norm_reference)(x, weight, EPS))
    expected = (add_rms_norm_triton if kernels else add_rms_norm_reference)(x, residual, weight, EPS)
    for got, want in zip(add_rms_norm(x, residual, weight, EPS), expected):
        assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_tokens", [1, 257, 4096])
def test_kernels_on_gpu_at_qwen3_shapes(num_tokens, dtype):
    x, residual, weight = make_inputs(num_tokens, 4096, dtype, device="cuda")
    assert_kernel_close(rms_norm(x, weight, EPS), rms_norm_reference(x, weight, EPS))
    out, residual_out = add_rms_norm(x, residual, weight, EPS)
    expected_out, expected_residual = add_rms_norm_reference(x, residual, weight, EPS)
    assert torch.equal(residual_out, expected_residual)
    assert_kernel_close(out, expected_out)
