"""A step's model inputs on the device: token ids, positions, KV-cache slots, context lengths
and block tables.

Prefill inputs are built fresh each step, their size varies with the chunks. Decode inputs go
into preallocated device buffers (fixed addresses, which CUDA graphs capture) through the
pinned ``HostStaging``: one copy, not waited for, for positions, slots, context lengths and
block tables together (on CUDA a kernel that reads the pinned bytes, ``ops.host_copy``; long
tables take a second one, packed, and are spread into their rows on the device).

Token ids take another way. With async scheduling a sequence's last token may not have reached
the host yet: it is on the device, in ``PendingTokens``. The sampler writes every step's tokens
into the decode token buffer itself, so in steady decode (the same sequences in the same rows as
the step before) the next step's input ids are already in place and nothing is copied; other
steps gather the pending tokens on the device and copy the rest from the host.
"""

from __future__ import annotations

import numpy as np
import torch

from ember.engine.host_staging import HostStaging, PackedDecodeInputs, copy_to_device
from ember.engine.sequence import Sequence
from ember.layers.attention import AttentionMetadata
from ember.ops.host_copy import copy_from_host


def block_tables(seqs: list[Sequence]) -> np.ndarray:
    """int32 [len(seqs), widest table], zero-padded: every table's raw bytes joined in one
    go and scattered at once, so the host cost barely grows with the batch."""
    lens = np.fromiter(map(len, (s.block_table for s in seqs)), np.int64, len(seqs))
    flat = np.frombuffer(b"".join(s.block_table.tobytes() for s in seqs), np.int32)
    tables = np.zeros((len(seqs), int(lens.max())), np.int32)
    rows = np.repeat(np.arange(len(seqs)), lens)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
    tables[rows, cols] = flat
    return tables


# Up to this many bytes of block tables travel with the other decode inputs in one copy: at
# batch 1 a whole 2,560-block table (40k tokens) is 10 KiB, still one small copy.
_ONE_COPY_TABLE_BYTES = 64 * 1024


class PendingTokens:
    """The last launch's sampled tokens on the device, and each sequence's row in them: the
    next step reads a token the host has not seen yet from here. The sampler records them."""

    def __init__(self):
        self.tokens: torch.Tensor | None = None
        self.rows: dict[int, int] = {}

    def record(self, tokens: torch.Tensor, seqs: list[Sequence]) -> None:
        self.tokens = tokens
        self.rows = {s.seq_id: i for i, s in enumerate(seqs)}

    def sources(self, seqs: list[Sequence], rows) -> tuple[list[int], list[int]] | None:
        """For the sequences whose input token ``rows[i]`` is still a placeholder: that input
        row, and the row of the previous step's sampled tokens that holds its value."""
        dst, src = [], []
        for s, row in zip(seqs, rows):
            if s.num_pending:
                # Only the previous launch can still be pending when the next one is prepared.
                dst.append(row)
                src.append(self.rows[s.seq_id])
        return (dst, src) if dst else None


class StepInputs:
    """Builds each step's inputs on the device; owns the decode buffers."""

    def __init__(self, max_num_seqs: int, max_blocks_per_seq: int, block_size: int, device: torch.device,
                 staging: HostStaging, pending: PendingTokens):
        self.block_size = block_size
        self.device = device
        self.pin = device.type == "cuda"
        self.staging = staging
        self.pending = pending
        n, dev = max_num_seqs, device
        # Decode-step buffers, reused every step (fixed addresses for graph capture). The token
        # ids are also where the sampler writes each step's tokens (``Sampler.tokens_out``).
        self.decode_input_ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.decode = PackedDecodeInputs(n, max_blocks_per_seq, device=dev)
        self.decode_positions = self.decode.positions
        self.decode_slots = self.decode.slots
        self.decode_context_lens = self.decode.context_lens
        self.decode_block_tables = self.decode.block_tables
        # Where long block tables land packed before they are spread into their rows.
        self.decode_tables_scratch = torch.empty(n * self.decode.row_bytes, dtype=torch.uint8, device=dev)

    def to_device(self, data, dtype) -> torch.Tensor:
        return copy_to_device(data, dtype, self.device, self.pin)

    def np_to_device(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(array)
        return (t.pin_memory() if self.pin else t).to(self.device, non_blocking=True)

    def _fill_pending(self, input_ids: torch.Tensor, sources) -> None:
        """Copy sampled tokens the host has not seen into ``input_ids``, on the device."""
        if sources is None:
            return
        dst, src = sources
        if dst == src == list(range(len(dst))):  # steady decode: same rows as the last step
            input_ids[: len(dst)].copy_(self.pending.tokens[: len(dst)])
            return
        dst, src = (self.to_device(x, torch.int64) for x in sources)
        input_ids.index_copy_(0, dst, self.pending.tokens.index_select(0, src))

    def prepare_prefill(self, seqs: list[Sequence], num_new_tokens: list[int]):
        """Flat inputs for the next ``num_new_tokens[i]`` uncached tokens of each sequence (a
        prompt chunk, or one decode token); queries attend to everything cached before them.
        Also returns each sequence's last row in the flat batch."""
        ids, positions, cu = [], [], [0]
        for s, n in zip(seqs, num_new_tokens):
            start, end = s.num_cached_tokens, s.num_cached_tokens + n
            ids.extend(s.token_ids[start:end])
            positions.extend(range(start, end))
            cu.append(cu[-1] + n)
        tables = block_tables(seqs)
        pos = np.asarray(positions, np.int64)
        seq_of_row = np.repeat(np.arange(len(seqs)), num_new_tokens)
        slots = tables[seq_of_row, pos // self.block_size].astype(np.int64) * self.block_size + pos % self.block_size
        meta = AttentionMetadata(
            is_prefill=True,
            slot_mapping=self.np_to_device(slots),
            context_lens=self.to_device([s.num_cached_tokens + n for s, n in zip(seqs, num_new_tokens)], torch.int32),
            block_tables=self.np_to_device(tables),
            cu_seqlens_q=self.to_device(cu, torch.int32),
            max_seqlen_q=max(num_new_tokens),
            # The scheduler puts decode rows first: these go through the decode kernel.
            num_decode_rows=next((i for i, n in enumerate(num_new_tokens) if n != 1), len(seqs)),
        )
        last_rows = [c - 1 for c in cu[1:]]
        input_ids = self.to_device(ids, torch.int64)
        # A placeholder can only be a sequence's last token, i.e. the last row of its chunk.
        self._fill_pending(input_ids, self.pending.sources(seqs, last_rows))
        return input_ids, self.to_device(positions, torch.int64), meta, last_rows

    def prepare_decode(self, seqs: list[Sequence], num_rows: int | None = None) -> None:
        """Fill the first ``num_rows`` (default: one per sequence) rows of the decode buffers.

        Rows past the sequences are padding: position 0 with context length 0 and slot -1, so
        they write no K/V and attend to nothing (the kernels return zeros); their token is any
        valid id (0, or what a graph's argmax left there).
        """
        b = len(seqs)
        n = b if num_rows is None else num_rows
        staging = self.staging.current
        host = staging.decode
        tables = block_tables(seqs)
        width = tables.shape[1]
        lens = np.fromiter(map(len, seqs), np.int64, b)
        pos = lens - 1
        host.positions.numpy()[:n] = np.pad(pos, (0, n - b))
        slots = tables[np.arange(b), pos // self.block_size].astype(np.int64) * self.block_size + pos % self.block_size
        host.slots.numpy()[:n] = np.pad(slots, (0, n - b), constant_values=-1)
        host.context_lens.numpy()[:n] = np.pad(lens, (0, n - b))
        # Block-table entries past a row's context length are never read, so stale ones (and
        # padding rows' tables) are harmless: whole rows travel when that keeps it one copy.
        dev = self.decode
        # On CUDA kernels read the pinned bytes (ops/host_copy.py): no copy engine, whose hand-over
        # cost ~8 us of idle device time per step at batch 1.
        if b * host.row_bytes <= _ONE_COPY_TABLE_BYTES:
            host.block_tables.numpy()[:b, :width] = tables
            used = host.used_bytes(b)
            copy_from_host(host.raw[:used], dev.raw[:used])
        else:  # long tables: only the columns in use, packed, then spread into their rows on device
            # (a strided copy from the host would go through a pageable temporary, which blocks
            # the host until the device has caught up: no more async scheduling)
            packed = host.raw[host.header_bytes: host.header_bytes + tables.nbytes]
            packed.numpy()[:] = tables.view(np.uint8).reshape(-1)
            copy_from_host(host.raw[: host.header_bytes], dev.raw[: host.header_bytes])
            scratch = self.decode_tables_scratch[: tables.nbytes]
            copy_from_host(packed, scratch)
            dev.block_tables[:b, :width].copy_(scratch.view(torch.int32).view(b, width))
        self._decode_input_ids(seqs, n)

    def _decode_input_ids(self, seqs: list[Sequence], n: int) -> None:
        b, ids = len(seqs), self.decode_input_ids
        sources = self.pending.sources(seqs, range(b))
        if sources is not None and sources[0] == sources[1] == list(range(b)) \
                and self.pending.tokens.data_ptr() == ids.data_ptr():
            return  # steady decode: the last step's sampler wrote these very rows
        gathered = None
        if sources is not None:  # read before the copy below overwrites the tokens' buffer
            gathered = self.pending.tokens.index_select(0, self.to_device(sources[1], torch.int64))
        staged = self.staging.current.input_ids
        staged.numpy()[:n] = np.pad(np.fromiter((s.token_ids[-1] for s in seqs), np.int64, b), (0, n - b))
        copy_from_host(staged[:n].view(torch.uint8), ids[:n].view(torch.uint8))
        if gathered is not None:
            ids.index_copy_(0, self.to_device(sources[0], torch.int64), gathered)
            self.pending.record(ids, seqs)  # the pending tokens now sit in these rows
