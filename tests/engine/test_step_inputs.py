"""Step inputs built on the host: block tables, prefill and decode inputs (padding rows
included), and tokens still on the device copied into place for async scheduling."""

from __future__ import annotations

from array import array

import numpy as np
import pytest
import torch

from ember import SamplingParams
from ember.engine.host_staging import HostStaging
from ember.engine.sampler_inputs import packed_bytes
from ember.engine.sequence import PENDING_TOKEN, Sequence
from ember.engine.step_inputs import PendingTokens, StepInputs, block_tables

BLOCK_SIZE = 4
MAX_NUM_SEQS = 6
MAX_BLOCKS = 8


def make_inputs(device: str = "cpu") -> StepInputs:
    staging = HostStaging(MAX_NUM_SEQS, MAX_BLOCKS, packed_bytes(MAX_NUM_SEQS), pin=device == "cuda")
    return StepInputs(MAX_NUM_SEQS, MAX_BLOCKS, BLOCK_SIZE, torch.device(device), staging, PendingTokens())


def make_seq(num_tokens: int, blocks: list[int], cached: int = 0) -> Sequence:
    s = Sequence([100 + 3 * i for i in range(num_tokens)], SamplingParams(), seed=0)
    s.block_table = array("i", blocks)
    s.num_cached_tokens = cached
    return s


def slot(s: Sequence, pos: int) -> int:
    return s.block_table[pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE


def test_block_tables_zero_padded():
    seqs = [make_seq(1, [7]), make_seq(9, [3, 1, 12]), make_seq(5, [0, 2])]
    assert block_tables(seqs).tolist() == [[7, 0, 0], [3, 1, 12], [0, 2, 0]]
    assert block_tables(seqs).dtype == np.int32


def test_prepare_prefill_chunks_and_decode_rows():
    inputs = make_inputs()
    # A first chunk, a later chunk of a longer prompt, and a decode row (one token).
    seqs = [make_seq(6, [5, 9]), make_seq(11, [2, 4, 8], cached=4), make_seq(7, [1, 6], cached=6)]
    num_new = [6, 5, 1]
    input_ids, positions, meta, last_rows = inputs.prepare_prefill(seqs, num_new)
    want_pos = [p for s, n in zip(seqs, num_new) for p in range(s.num_cached_tokens, s.num_cached_tokens + n)]
    want_ids = [t for s, n in zip(seqs, num_new) for t in s.token_ids[s.num_cached_tokens: s.num_cached_tokens + n]]
    assert input_ids.tolist() == want_ids and positions.tolist() == want_pos
    seq_of_row = [i for i, n in enumerate(num_new) for _ in range(n)]
    assert meta.is_prefill and meta.max_seqlen_q == 6
    assert meta.slot_mapping.tolist() == [slot(seqs[i], p) for i, p in zip(seq_of_row, want_pos)]
    assert meta.context_lens.tolist() == [6, 9, 7] and meta.context_lens.dtype == torch.int32
    assert meta.cu_seqlens_q.tolist() == [0, 6, 11, 12]
    assert meta.block_tables.tolist() == [[5, 9, 0], [2, 4, 8], [1, 6, 0]]
    assert last_rows == [5, 10, 11]
    assert meta.num_decode_rows == 0  # the one-token row is not a leading one


def test_prepare_prefill_counts_the_leading_one_token_rows():
    # The scheduler puts decode rows first: those go through the decode kernel.
    inputs = make_inputs()
    seqs = [make_seq(7, [1, 6], cached=6), make_seq(4, [3], cached=3), make_seq(6, [5, 9]), make_seq(9, [2, 4, 7], cached=8)]
    _, _, meta, _ = inputs.prepare_prefill(seqs, [1, 1, 6, 1])
    assert meta.num_decode_rows == 2
    _, _, meta, _ = inputs.prepare_prefill(seqs[:2], [1, 1])
    assert meta.num_decode_rows == 2


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_prepare_decode_fills_buffers_and_pads(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    inputs = make_inputs(device)
    seqs = [make_seq(5, [3, 7]), make_seq(1, [4]), make_seq(9, [1, 2, 6])]
    inputs.prepare_decode(seqs, num_rows=5)
    assert inputs.decode_input_ids[:5].tolist() == [s.token_ids[-1] for s in seqs] + [0, 0]
    assert inputs.decode_positions[:5].tolist() == [4, 0, 8, 0, 0]
    assert inputs.decode_slots[:5].tolist() == [slot(s, len(s) - 1) for s in seqs] + [-1, -1]
    assert inputs.decode_context_lens[:5].tolist() == [5, 1, 9, 0, 0]
    assert inputs.decode_block_tables[:3, :3].tolist() == [[3, 7, 0], [4, 0, 0], [1, 2, 6]]
    # It went through the current staging set, not the other one.
    assert inputs.staging.current.decode.context_lens[:3].tolist() == [5, 1, 9]
    other = inputs.staging.sets[1 - inputs.staging.parity].decode
    offset = int(other.token_offset[0])  # the one field each set holds from the start: where its tokens go
    other.token_offset.zero_()
    assert other.raw.eq(0).all()
    other.token_offset[0] = offset
    # The device header says where a decode graph writes this launch's tokens on the host.
    assert inputs.decode.token_offset.tolist() == inputs.staging.current.decode.token_offset.tolist()
    # A smaller batch after it: the rows past it become padding again.
    inputs.staging.flip()
    inputs.prepare_decode(seqs[:1], num_rows=2)
    assert inputs.decode_context_lens[:2].tolist() == [5, 0] and inputs.decode_slots[:2].tolist() == [slot(seqs[0], 4), -1]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_prepare_decode_long_tables_take_a_second_copy(monkeypatch, device):
    """Past the one-copy limit the tables travel alone, only their used columns; the device
    buffers hold the same either way (on CUDA: kernels reading pinned memory, then a spread)."""
    import ember.engine.step_inputs as step_inputs

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    seqs = [make_seq(5, [3, 7]), make_seq(1, [4]), make_seq(9, [1, 2, 6])]
    filled = {}
    for limit in (1 << 20, 0):
        monkeypatch.setattr(step_inputs, "_ONE_COPY_TABLE_BYTES", limit)
        inputs = make_inputs(device)
        inputs.decode.block_tables.fill_(-7)  # stale entries past the used columns stay untouched
        inputs.prepare_decode(seqs, num_rows=4)
        filled[limit] = inputs.decode.block_tables.cpu()
        assert inputs.decode_slots[:4].tolist() == [slot(s, len(s) - 1) for s in seqs] + [-1]
        assert inputs.decode_context_lens[:4].tolist() == [5, 1, 9, 0]
        assert inputs.decode.token_offset.tolist() == inputs.staging.current.decode.token_offset.tolist()
    assert filled[0][:3, :3].tolist() == filled[1 << 20][:3, :3].tolist() == [[3, 7, 0], [4, 0, 0], [1, 2, 6]]
    assert filled[0][:, 3:].eq(-7).all() and filled[0][3:].eq(-7).all()
    assert filled[1 << 20][3:].eq(-7).all()  # whole rows, but only the batch's


def pending_seq(num_tokens: int, blocks: list[int], cached: int) -> Sequence:
    s = make_seq(num_tokens, blocks, cached)
    s.append_pending()
    return s


def test_pending_tokens_filled_on_the_device():
    inputs = make_inputs()
    a, b, c = pending_seq(4, [1, 2], 4), pending_seq(6, [3, 4], 6), make_seq(3, [5], 2)
    sampled = torch.tensor([70, 71, 72])
    # Tokens sampled elsewhere than the decode buffer (not what the sampler does): gathered.
    inputs.pending.record(sampled[:2], [a, b])
    assert inputs.pending.sources([a, b], [0, 1]) == ([0, 1], [0, 1])
    inputs.prepare_decode([a, b])
    assert inputs.decode_input_ids[:2].tolist() == [70, 71]
    assert inputs.pending.tokens is inputs.decode_input_ids  # and now known to sit there
    # Rows moved (c joined, b now first): copied by index, before the host's ids land.
    ids = inputs.decode_input_ids
    ids[:3] = sampled
    inputs.pending.record(ids[:3], [c, a, b])
    inputs.prepare_decode([b, c, a])
    assert inputs.decode_input_ids[:3].tolist() == [72, c.token_ids[-1], 71]
    assert inputs.pending.rows == {b.seq_id: 0, c.seq_id: 1, a.seq_id: 2}
    # Steady decode, tokens written into the decode buffer by the sampler: nothing is copied,
    # not even the host's placeholder for them.
    ids[:3] = torch.tensor([80, 81, 82])
    inputs.pending.record(ids[:3], [b, c, a])
    inputs.staging.flip()
    inputs.prepare_decode([b, a], num_rows=2)  # c left: rows moved, gathered again
    assert inputs.decode_input_ids[:2].tolist() == [80, 82]
    inputs.pending.record(ids[:2], [b, a])
    ids[:2] = torch.tensor([90, 91])
    inputs.staging.flip()
    inputs.staging.current.input_ids.fill_(-5)
    inputs.prepare_decode([b, a], num_rows=4)
    assert inputs.decode_input_ids[:2].tolist() == [90, 91]
    assert inputs.staging.current.input_ids.eq(-5).all()  # the host staged no ids this time
    # The same step prepared again (as tests do) finds the tokens in place.
    inputs.prepare_decode([b, a], num_rows=4)
    assert inputs.decode_input_ids[:2].tolist() == [90, 91]
    # Prefill path: a placeholder is the last row of its sequence's chunk.
    input_ids, _, _, last_rows = inputs.prepare_prefill([c, a], [1, 1])
    assert input_ids.tolist() == [c.token_ids[-1], 91] and a.token_ids[-1] == PENDING_TOKEN
    assert inputs.pending.sources([c, a], last_rows) == ([1], [1])
    assert inputs.pending.sources([c], [0]) is None
