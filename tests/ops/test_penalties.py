"""vLLM's penalties: the kernel bit-identical to the reference, each penalty on its own tokens."""

import pytest
import torch

# tests/conftest.py sets TRITON_INTERPRET=1 without a GPU, before ember.ops is imported.

from ember.ops.penalties import apply_penalties, apply_penalties_reference, apply_penalties_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # kernels run on CPU tensors in the interpreter
QWEN_VOCAB = 151936


def penalty_inputs(batch, vocab, gen, device=DEVICE):
    logits = torch.randn(batch, vocab, generator=gen) * 4
    prompt_mask = torch.rand(batch, vocab, generator=gen) < 0.1
    generated = torch.rand(batch, vocab, generator=gen) < 0.05
    counts = torch.where(generated, torch.randint(1, 5, (batch, vocab), generator=gen), 0)
    presence = torch.rand(batch, generator=gen) * 2 - 1
    frequency = torch.rand(batch, generator=gen) * 2 - 1
    repetition = torch.rand(batch, generator=gen) + 0.5
    presence[0], frequency[0], repetition[0] = 0.0, 0.0, 1.0  # row 0: all off
    tensors = (logits, prompt_mask, counts.to(torch.int32), presence, frequency, repetition)
    return tuple(t.to(device) for t in tensors)


def test_penalties_kernel_matches_reference():
    inputs = penalty_inputs(5, 3001, torch.Generator().manual_seed(6))
    expected = apply_penalties_reference(inputs[0].clone(), *inputs[1:])
    logits = inputs[0].clone()
    out = apply_penalties_triton(logits, *inputs[1:])
    assert out is logits and torch.equal(out, expected)  # in place, bit-identical
    assert torch.equal(expected[0], inputs[0][0])  # neutral penalties change nothing
    assert torch.equal(apply_penalties(inputs[0].clone(), *inputs[1:]), expected)


def test_each_penalty_moves_only_its_tokens():
    logits, prompt_mask, counts, _, _, _ = penalty_inputs(1, 2000, torch.Generator().manual_seed(7))
    one, zero = torch.ones(1, device=DEVICE), torch.zeros(1, device=DEVICE)
    generated, seen = counts[0] > 0, prompt_mask[0] | (counts[0] > 0)
    for impl in (apply_penalties_reference, apply_penalties_triton):
        rep = impl(logits.clone(), prompt_mask, counts, zero, zero, one * 2)[0]
        assert torch.equal(rep[~seen], logits[0][~seen])
        assert torch.equal(rep[seen], torch.where(logits[0][seen] > 0, logits[0][seen] / 2, logits[0][seen] * 2))
        freq = impl(logits.clone(), prompt_mask, counts, zero, one * 0.5, one)[0]
        assert torch.equal(freq[~generated], logits[0][~generated])
        assert torch.allclose(freq[generated], logits[0][generated] - 0.5 * counts[0][generated])
        pres = impl(logits.clone(), prompt_mask, counts, one * 0.25, zero, one)[0]
        assert torch.equal(pres[~generated], logits[0][~generated])
        assert torch.allclose(pres[generated], logits[0][generated] - 0.25)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch", [1, 32, 256])
def test_gpu_penalties_match_reference(batch):
    inputs = penalty_inputs(batch, QWEN_VOCAB, torch.Generator().manual_seed(batch), "cuda")
    expected = apply_penalties_reference(inputs[0].clone(), *inputs[1:])
    assert torch.equal(apply_penalties(inputs[0].clone(), *inputs[1:]), expected)
