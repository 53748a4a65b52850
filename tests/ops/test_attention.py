"""Paged prefill attention: the Triton kernel against the PyTorch reference.

Without a GPU the kernel runs on CPU tensors in Triton's interpreter (slow: small shapes);
with one, the same cases run compiled on CUDA, plus realistic shapes marked ``gpu``.
"""

import pytest
import torch
from paged_attention_cases import HAS_CUDA, assert_close, assert_not_specialised, make_prefill

from ember.ops import attention
from ember.ops.attention import (
    paged_prefill_attention,
    paged_prefill_attention_reference,
    paged_prefill_attention_triton,
)

# ---------------------------------------------------------------- prefill kernel
PREFILL_CASES = {  # name: (q_lens, ctx_lens, Hq, Hkv, D, block_size)
    "ragged": ([1, 5, 17, 33], [1, 5, 17, 33], 4, 2, 32, 16),
    "prefix_cached": ([3, 0, 20, 1], [40, 7, 90, 129], 4, 4, 32, 8),
    "two_q_blocks_long_prefix": ([100], [230], 2, 1, 64, 32),
}


@pytest.mark.parametrize("name", list(PREFILL_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_prefill_kernel(name, dtype):
    q_lens, ctx_lens, num_q_heads, num_kv_heads, head_dim, block_size = PREFILL_CASES[name]
    args, _ = make_prefill(q_lens, ctx_lens, num_q_heads, num_kv_heads, head_dim, dtype, block_size)
    assert_close(paged_prefill_attention_triton(*args), paged_prefill_attention_reference(*args), dtype)


@pytest.mark.parametrize("num_q_heads,num_kv_heads", [(4, 4), (8, 4), (8, 2), (16, 2)])
def test_prefill_kernel_gqa(num_q_heads, num_kv_heads):
    args, _ = make_prefill([6, 19], [6, 27], num_q_heads, num_kv_heads, 32, torch.float16, block_size=8, seed=3)
    assert_close(paged_prefill_attention_triton(*args), paged_prefill_attention_reference(*args), torch.float16)


def test_prefill_kernel_head_dim_128():
    args, _ = make_prefill([9, 70], [9, 75], 4, 2, 128, torch.bfloat16, block_size=16, seed=5)
    assert_close(paged_prefill_attention_triton(*args), paged_prefill_attention_reference(*args), torch.bfloat16)


def test_kernel_accepts_strided_q():
    # The model slices q out of a fused qkv projection: token and head strides are not q's own.
    (q, *rest), _ = make_prefill([7, 12], [7, 20], 4, 2, 32, torch.float16, block_size=8, seed=19)
    q_view = torch.cat([q, torch.randn_like(q)], dim=1)[:, :4]
    assert not q_view.is_contiguous()
    assert_close(paged_prefill_attention_triton(q_view, *rest), paged_prefill_attention_reference(q, *rest),
                 torch.float16)


@pytest.mark.parametrize("impl", [paged_prefill_attention_triton, paged_prefill_attention_reference])
def test_prefill_of_later_sequences_into_out(impl):
    # A mixed step attends its leading one-token rows with the decode kernel and the rest here,
    # from sequence first_seq on; the rows of the sequences before it stay as they were in out.
    (q, k_cache, v_cache, cu, ctx, tables, scale, max_q), _ = make_prefill(
        [1, 1, 1, 9, 20], [30, 7, 12, 9, 41], 4, 2, 32, torch.float32, block_size=8, seed=23)
    full = paged_prefill_attention_reference(q, k_cache, v_cache, cu, ctx, tables, scale, max_q)
    for first_seq in (2, 3, 4):
        out = torch.full_like(q, 7.0)
        assert impl(q, k_cache, v_cache, cu, ctx, tables, scale, max_q, out=out, first_seq=first_seq) is out
        rows = int(cu[first_seq])  # the token rows of the sequences before first_seq
        assert (out[:rows] == 7.0).all()
        assert_close(out[rows:], full[rows:], torch.float32)


def test_dispatch_uses_reference_on_cpu_tensors():
    if HAS_CUDA:
        pytest.skip("CPU-only dispatch check")
    args, _ = make_prefill([5], [5], 2, 1, 32, torch.float32, block_size=8)
    torch.testing.assert_close(paged_prefill_attention(*args), paged_prefill_attention_reference(*args))


def test_kernel_does_not_specialise_on_the_block_table_width():
    # The width changes between eager steps; a specialisation on it (== 1, % 16) compiled a new
    # kernel variant in the middle of the throughput benchmark, costing ~1 s there. The first
    # sequence after a mixed step's decode rows likewise.
    assert_not_specialised(attention._prefill_kernel, "stride_bt_seq")
    assert_not_specialised(attention._prefill_kernel, "first_seq")


# ---------------------------------------------------------------- realistic shapes on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_prefill_realistic(dtype):
    q_lens, ctx_lens = [1, 700, 2048, 4096, 37, 0], [1, 700, 2100, 8192, 5000, 300]
    args, _ = make_prefill(q_lens, ctx_lens, 32, 8, 128, dtype, block_size=16, seed=21)
    assert_close(paged_prefill_attention(*args), paged_prefill_attention_reference(*args), dtype)
