"""The counter-based uniforms: the kernel bit-identical to the torch reference, and random enough."""

import pytest
import torch

# tests/conftest.py sets TRITON_INTERPRET=1 without a GPU, before ember.ops is imported.

from ember.ops.hash_random import random_uniform_reference, random_uniform_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # kernels run on CPU tensors in the interpreter
QWEN_VOCAB = 151936


def test_hash_uniforms_are_bit_identical():
    seeds = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 12345678901234], dtype=torch.int64, device=DEVICE)
    steps = torch.tensor([0, 0, 5, 2**40, 1, 2**32 + 7], dtype=torch.int64, device=DEVICE)
    expected = random_uniform_reference(seeds, steps, 5000)
    assert torch.equal(random_uniform_triton(seeds, steps, 5000), expected)
    assert expected.min() > 0 and expected.max() < 1
    assert abs(expected.mean().item() - 0.5) < 0.01 and abs(expected.var().item() - 1 / 12) < 0.005
    assert len({row[:8].tolist().__repr__() for row in expected}) == len(seeds)  # rows are distinct streams
    assert torch.corrcoef(expected[:2]).abs()[0, 1] < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch", [1, 32, 256])
def test_gpu_uniforms_are_bit_identical(batch):
    gen = torch.Generator().manual_seed(batch)
    seeds = torch.randint(-(2**62), 2**62, (batch,), generator=gen, dtype=torch.int64).cuda()
    steps = torch.randint(0, 2**40, (batch,), generator=gen, dtype=torch.int64).cuda()
    expected = random_uniform_reference(seeds, steps, QWEN_VOCAB)
    assert torch.equal(random_uniform_triton(seeds, steps, QWEN_VOCAB), expected)
