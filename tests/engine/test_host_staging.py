"""Host staging: two buffer sets used on alternate launches, pinned (with an event) on CUDA
only; and the one-off copies of inputs too varied to stage."""

from __future__ import annotations

import pytest
import torch

from ember.engine.host_staging import HostStaging, PackedDecodeInputs, copy_to_device


def test_two_sets_alternate():
    staging = HostStaging(max_num_seqs=5, max_blocks_per_seq=3, sampling_params_bytes=100, pin=False)
    first = staging.current
    staging.flip()
    second = staging.current
    assert second is not first and {id(first), id(second)} == {id(s) for s in staging.sets}
    staging.flip()
    assert staging.current is first
    for s in staging.sets:
        assert s.input_ids.shape == (5,) and s.input_ids.dtype == torch.int64
        assert s.decode.block_tables.shape == (5, 3) and s.decode.block_tables.dtype == torch.int32
        assert s.tokens.shape == (5,) and s.tokens.dtype == torch.int64
        assert s.sampling_params.shape == (100,) and s.sampling_params.dtype == torch.uint8
        assert s.ready is None and not s.decode.raw.is_pinned()
    assert first.decode.raw.data_ptr() != second.decode.raw.data_ptr()
    # Each set's header says where a decode graph writes that launch's tokens: its own row.
    for i, s in enumerate(staging.sets):
        offset = int(s.decode.token_offset[0])
        assert offset == 5 * i and staging.tokens_both[offset:].data_ptr() == s.tokens.data_ptr()


def test_packed_decode_inputs_layout():
    """Five typed views over one byte buffer, each section 16-byte aligned, none overlapping; a
    prefix of the buffer holds the header and the first tables, so one copy can move them."""
    p = PackedDecodeInputs(max_num_seqs=5, max_blocks_per_seq=3)
    views = [(p.positions, torch.int64, (5,)), (p.slots, torch.int64, (5,)), (p.context_lens, torch.int32, (5,)),
             (p.block_tables, torch.int32, (5, 3)), (p.token_offset, torch.int32, (1,))]
    base = p.raw.data_ptr()
    for value, (view, dtype, shape) in enumerate(views, start=1):
        assert view.dtype == dtype and view.shape == shape and view.is_contiguous()
        assert (view.data_ptr() - base) % 16 == 0 and view.untyped_storage().data_ptr() == base
        view.fill_(value)
    counts = torch.bincount(p.raw, minlength=6)  # every byte of each view now holds its value's bytes
    assert counts[1] == 1 * 5 and counts[2] == 5 and counts[3] == 5 and counts[4] == 15 and counts[5] == 1
    assert p.used_bytes(0) == p.header_bytes == 20 * 8 + 16 and p.used_bytes(2) == p.header_bytes + 2 * 12
    assert p.block_tables[:2].flatten().data_ptr() + 2 * 12 == base + p.used_bytes(2)
    assert p.raw.numel() == p.used_bytes(5)


@pytest.mark.gpu
def test_pinned_with_an_event_on_cuda():
    staging = HostStaging(max_num_seqs=5, max_blocks_per_seq=3, sampling_params_bytes=100, pin=True)
    for s in staging.sets:
        assert all(t.is_pinned() for t in (s.input_ids, s.decode.raw, s.tokens, s.sampling_params))
        assert staging.tokens_both.is_pinned()
        assert isinstance(s.ready, torch.cuda.Event)


def test_copy_to_device():
    t = copy_to_device([3, 1, 2], torch.int32, torch.device("cpu"), pin=False)
    assert t.tolist() == [3, 1, 2] and t.dtype == torch.int32
