"""embedding: the kernel is a pure row copy, so it must equal the reference (and HF) bit for bit.

Kernels run on CUDA when there is a GPU, else on CPU tensors in the Triton interpreter.
"""


import torch

# tests/conftest.py sets TRITON_INTERPRET=1 without a GPU, before ember.ops is imported.

import pytest

from ember.ops.embedding import embedding, embedding_reference, embedding_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden_size", [96, 1000, 1024])
@pytest.mark.parametrize("num_tokens", [1, 7, 33])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_kernel_matches_reference(num_tokens, hidden_size, dtype, id_dtype):
    gen = torch.Generator().manual_seed(num_tokens * 10007 + hidden_size)
    vocab_size = 50
    weight = torch.randn(vocab_size, hidden_size, generator=gen).to(device=DEVICE, dtype=dtype)
    token_ids = torch.randint(0, vocab_size, (num_tokens,), generator=gen, dtype=torch.int64)
    token_ids[0] = vocab_size - 1  # the last row too
    token_ids = token_ids.to(device=DEVICE, dtype=id_dtype)
    out = embedding_triton(token_ids, weight)
    assert out.shape == (num_tokens, hidden_size) and out.dtype == dtype
    assert torch.equal(out, embedding_reference(token_ids, weight))


def test_empty_batch():
    weight = torch.randn(10, 96, device=DEVICE)
    assert embedding_triton(torch.empty(0, dtype=torch.int64, device=DEVICE), weight).shape == (0, 96)


def test_reference_matches_hf_embedding():
    torch.manual_seed(0)
    hf = torch.nn.Embedding(64, 96, padding_idx=3).to(torch.bfloat16)  # Qwen3Model.embed_tokens
    token_ids = torch.tensor([0, 3, 63, 5, 5])
    with torch.no_grad():
        assert torch.equal(embedding_reference(token_ids, hf.weight), hf(token_ids))


def test_dispatcher():
    weight = torch.randn(10, 96, device=DEVICE)
    token_ids = torch.tensor([1, 2], device=DEVICE)
    assert torch.equal(embedding(token_ids, weight), weight[token_ids])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_tokens", [1, 257, 4096])
def test_kernel_on_gpu_at_qwen3_shapes(num_tokens, dtype):
    vocab_size, hidden_size = 151936, 4096
    weight = torch.randn(vocab_size, hidden_size, device="cuda", dtype=dtype)
    token_ids = torch.randint(0, vocab_size, (num_tokens,), device="cuda", dtype=torch.int32)
    token_ids[0] = vocab_size - 1
    assert torch.equal(embedding_triton(token_ids, weight), embedding_reference(token_ids, weight))
    assert torch.equal(embedding(token_ids, weight), embedding_reference(token_ids, weight))
