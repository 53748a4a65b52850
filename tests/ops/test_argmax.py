"""Greedy argmax: the split kernel against torch.argmax (first index of the maximum)."""

import pytest
import torch

# tests/conftest.py sets TRITON_INTERPRET=1 without a GPU, before ember.ops is imported.
from ember.ops.argmax import argmax_rows, argmax_rows_reference, argmax_rows_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernel runs on CPU tensors in the interpreter


def random_logits(rows, vocab, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=gen) * 4).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab", [1, 255, 256, 1000, 2048 + 7])
def test_kernel_equals_torch_argmax(dtype, vocab):
    logits = random_logits(5, vocab, dtype, seed=vocab)
    assert torch.equal(argmax_rows_triton(logits), logits.argmax(dim=-1))


def test_ties_take_the_first_index_across_splits():
    # Several splits hold the same maximum; within one split it appears twice.
    logits = random_logits(4, 1000, torch.bfloat16, seed=1).clamp(max=5.0)
    logits[0, [900, 300, 301]] = 20.0  # first in split 1 (256 per split on CPU)
    logits[1, [999, 998]] = 20.0  # last split, which is partial
    logits[2, :] = -float("inf")  # every logit masked: index 0, as torch
    logits[3, [0, 255, 256]] = 7.0
    expected = logits.argmax(dim=-1)
    assert expected.tolist() == [300, 998, 0, 0]
    assert torch.equal(argmax_rows_triton(logits), expected)


def test_nan_is_the_maximum_as_in_torch():
    logits = random_logits(2, 700, torch.float32, seed=2)
    logits[0, 650] = float("nan")
    logits[1, 10] = float("nan")
    logits[1, 600] = float("nan")
    assert argmax_rows_triton(logits).tolist() == logits.argmax(dim=-1).tolist() == [650, 10]


def test_writes_into_a_strided_buffer_slice_and_any_row_stride():
    # The decode graph writes into the first rows of its int64 token buffer; the logits may be a
    # row slice of a wider buffer.
    wide = random_logits(3, 1200, torch.bfloat16, seed=3)
    logits = wide[:, :1000]
    buffer = torch.full((8,), -1, dtype=torch.int64, device=DEVICE)
    returned = argmax_rows_triton(logits, out=buffer[:3])
    assert returned.data_ptr() == buffer.data_ptr()
    assert buffer[:3].tolist() == logits.argmax(dim=-1).tolist() and (buffer[3:] == -1).all()
    int32_out = torch.empty(3, dtype=torch.int32, device=DEVICE)
    assert argmax_rows_triton(logits, out=int32_out).tolist() == logits.argmax(dim=-1).tolist()


def test_empty_batch_and_dispatch():
    assert argmax_rows_triton(torch.empty(0, 10, device=DEVICE)).shape == (0,)
    logits = random_logits(2, 300, torch.float32, seed=4)
    out = torch.empty(2, dtype=torch.int64, device=DEVICE)
    assert torch.equal(argmax_rows(logits, out=out), logits.argmax(dim=-1))
    assert torch.equal(argmax_rows_reference(logits.cpu()), logits.cpu().argmax(dim=-1))


@pytest.mark.parametrize("impl", [argmax_rows_triton, argmax_rows_reference])
def test_host_out_lands_at_the_offset_read_on_device(impl):
    # The decode graph writes each replay's tokens into one of two host rows, chosen by an offset
    # that the step's input copy brings (pinned host memory on CUDA; a CPU tensor here).
    logits = random_logits(3, 900, torch.bfloat16, seed=5)
    host = torch.full((2 * 4,), -1, dtype=torch.int64, pin_memory=torch.cuda.is_available())  # mapped on CUDA
    offset = torch.tensor([4], dtype=torch.int32, device=DEVICE)
    out = torch.empty(3, dtype=torch.int64, device=DEVICE)
    impl(logits, out=out, host_out=(host, offset))
    expected = logits.argmax(dim=-1).tolist()
    assert out.tolist() == expected and host[4:7].tolist() == expected
    assert (host[:4] == -1).all() and host[7] == -1
