"""The kernel copy from pinned host memory against ``copy_`` (the interpreter runs it on CPU tensors)."""

import pytest
import torch

from ember.ops.host_copy import HOST_COPY_BLOCK, copy_from_host, copy_from_host_reference, copy_from_host_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("num_bytes", [0, 4, 4 * HOST_COPY_BLOCK, 4 * HOST_COPY_BLOCK + 20, 3 * 4 * HOST_COPY_BLOCK + 4])
@pytest.mark.parametrize("impl", [copy_from_host_triton, copy_from_host_reference])
def test_copies_exactly_the_prefix(num_bytes, impl):
    gen = torch.Generator().manual_seed(num_bytes)
    src = torch.randint(0, 256, (num_bytes + 8,), generator=gen, dtype=torch.uint8,
                        pin_memory=torch.cuda.is_available())
    dst = torch.full((num_bytes + 8,), 7, dtype=torch.uint8, device=DEVICE)
    returned = impl(src[:num_bytes], dst[:num_bytes])
    assert returned.data_ptr() == (dst.data_ptr() if num_bytes else 0)
    assert torch.equal(dst[:num_bytes].cpu(), src[:num_bytes]) and (dst[num_bytes:] == 7).all()


def test_rejects_what_it_cannot_copy_by_words():
    with pytest.raises(AssertionError):
        copy_from_host_triton(torch.zeros(6, dtype=torch.uint8), torch.zeros(6, dtype=torch.uint8))
    with pytest.raises(AssertionError):
        copy_from_host_triton(torch.zeros(8, dtype=torch.int32), torch.zeros(8, dtype=torch.int32))


def test_dispatch_off_cuda_is_copy_():
    src, dst = torch.arange(8, dtype=torch.uint8), torch.zeros(8, dtype=torch.uint8)
    assert copy_from_host(src, dst).tolist() == list(range(8))
