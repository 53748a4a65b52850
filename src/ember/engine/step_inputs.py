"""A step's model inputs on the device: token ids, positions, KV-cache slots, context lengths
and block tables.

Prefill inputs are built fresh each step, their size varies with the chunks. Decode inputs go
into preallocated device buffers (fixed addresses, which CUDA graphs capture) through the
pinned ``HostStaging``: a few copies, none waited for. With async scheduling a sequence's last
token may not have reached the host yet; its value is copied in on the device from
``PendingTokens``.
"""

from __future__ import annotations

import numpy as np
import torch

from ember.engine.host_staging import HostStaging, copy_to_device
from ember.engine.sequence import Sequence
from ember.layers.attention import AttentionMetadata


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


class PendingTokens:
    """The last launch's sampled tokens on the device, and each sequence's row in them: the
    next step reads a token the host has not seen yet from here. The sampler records them."""

    def __init__(self):
        self.tokens: torch.Tensor | None = None
        self.rows: dict[int, int] = {}

    def record(self, tokens: torch.Tensor, seqs: list[Sequence]) -> None:
        self.tokens = tokens
        self.rows = {s.seq_id: i for i, s in enumerate(seqs)}

    def sources(self, seqs: list[Sequence], rows: list[int]) -> tuple[list[int], list[int]] | None:
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
        # Decode-step buffers, reused every step (fixed addresses for graph capture).
        self.decode_input_ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.decode_positions = torch.zeros(n, dtype=torch.int64, device=dev)
        self.decode_slots = torch.zeros(n, dtype=torch.int64, device=dev)
        self.decode_context_lens = torch.zeros(n, dtype=torch.int32, device=dev)
        self.decode_block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=dev)

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
        )
        last_rows = [c - 1 for c in cu[1:]]
        input_ids = self.to_device(ids, torch.int64)
        # A placeholder can only be a sequence's last token, i.e. the last row of its chunk.
        self._fill_pending(input_ids, self.pending.sources(seqs, last_rows))
        return input_ids, self.to_device(positions, torch.int64), meta, last_rows

    def prepare_decode(self, seqs: list[Sequence], num_rows: int | None = None) -> None:
        """Fill the first ``num_rows`` (default: one per sequence) rows of the decode buffers.

        Rows past the sequences are padding: token 0 at position 0 with context length 0 and
        slot -1, so they write no K/V and attend to nothing (the kernels return zeros).
        """
        b = len(seqs)
        n = b if num_rows is None else num_rows
        staging = self.staging.current
        tables = block_tables(seqs)
        width = tables.shape[1]
        lens = np.fromiter(map(len, seqs), np.int64, b)
        pos = lens - 1
        host = staging.rows.numpy()[:, :n]  # token, position, slot, context length
        host[0, :b] = np.fromiter((s.token_ids[-1] for s in seqs), np.int64, b)
        host[1, :b] = pos
        host[2, :b] = tables[np.arange(b), pos // self.block_size].astype(np.int64) * self.block_size \
            + pos % self.block_size
        host[3, :b] = lens
        host[:, b:] = [[0], [0], [-1], [0]]
        staging.tables.numpy()[:b, :width] = tables
        rows = staging.rows
        for dst, i in ((self.decode_input_ids, 0), (self.decode_positions, 1), (self.decode_slots, 2),
                       (self.decode_context_lens, 3)):
            dst[:n].copy_(rows[i, :n], non_blocking=True)
        # Only the columns in use: entries past a row's context length are never read, so
        # stale ones (and padding rows' tables) are harmless, and the host work stays small.
        self.decode_block_tables[:b, :width].copy_(staging.tables[:b, :width], non_blocking=True)
        self._fill_pending(self.decode_input_ids, self.pending.sources(seqs, list(range(b))))
