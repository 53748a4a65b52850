"""Host staging: two buffer sets used on alternate launches, pinned (with an event) on CUDA
only; and the one-off copies of inputs too varied to stage."""

from __future__ import annotations

import pytest
import torch

from ember.engine.host_staging import HostStaging, copy_to_device


def test_two_sets_alternate():
    staging = HostStaging(max_num_seqs=5, max_blocks_per_seq=3, sampling_params_bytes=100, pin=False)
    first = staging.current
    staging.flip()
    second = staging.current
    assert second is not first and {id(first), id(second)} == {id(s) for s in staging.sets}
    staging.flip()
    assert staging.current is first
    for s in staging.sets:
        assert s.rows.shape == (4, 5) and s.rows.dtype == torch.int64
        assert s.tables.shape == (5, 3) and s.tables.dtype == torch.int32
        assert s.tokens.shape == (5,) and s.tokens.dtype == torch.int64
        assert s.sampling_params.shape == (100,) and s.sampling_params.dtype == torch.uint8
        assert s.ready is None and not s.rows.is_pinned()
    assert first.rows.data_ptr() != second.rows.data_ptr()


@pytest.mark.gpu
def test_pinned_with_an_event_on_cuda():
    staging = HostStaging(max_num_seqs=5, max_blocks_per_seq=3, sampling_params_bytes=100, pin=True)
    for s in staging.sets:
        assert all(t.is_pinned() for t in (s.rows, s.tables, s.tokens, s.sampling_params))
        assert isinstance(s.ready, torch.cuda.Event)


def test_copy_to_device():
    t = copy_to_device([3, 1, 2], torch.int32, torch.device("cpu"), pin=False)
    assert t.tolist() == [3, 1, 2] and t.dtype == torch.int32
