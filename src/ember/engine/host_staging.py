"""Host memory that a step's small host<->device copies go through.

On CUDA the buffers are pinned, so the copies run asynchronously (``non_blocking=True``), and
device-mapped, so kernels read them directly (the decode inputs, ``ops/host_copy.py``) and a
decode graph's argmax writes the tokens into them; the host never waits for any of it. That
makes reusing a buffer the hazard: it must not be refilled while a copy or kernel reading (or
writing) it may still be pending. Hence two sets, used on alternate launches: a set is refilled
two launches later, when its readers and writers are long done, because the launch in between
waited for this one's tokens (its ``ready`` event, recorded after everything of the launch)
before going on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def copy_to_device(data, dtype: torch.dtype, device: torch.device, pin: bool) -> torch.Tensor:
    """``data`` (a list) on ``device`` without waiting: a fresh host tensor, pinned when ``pin``,
    copied with ``non_blocking``. For inputs whose size varies too much to stage."""
    t = torch.tensor(data, dtype=dtype, pin_memory=pin)
    return t.to(device, non_blocking=True)


class PackedDecodeInputs:
    """A decode step's positions and KV slots (int64 [N] each), context lengths (int32 [N]), a
    control word and block tables (int32 [N, W]) in one byte buffer, so that a single copy moves
    them all (each copy outside the decode graph costs a few microseconds of device time at batch
    1). The same layout serves the pinned host side and the device side, where the graphs read it.
    ``token_offset`` (int32 [1]) says where in ``HostStaging.tokens_both`` a decode graph's argmax
    writes the step's tokens (the staging set's row)."""

    def __init__(self, max_num_seqs: int, max_blocks_per_seq: int, device: torch.device | None = None,
                 pin: bool = False):
        n, w = max_num_seqs, max_blocks_per_seq
        # Sections start on 16-byte boundaries (the alignment Triton specialises pointers on).
        stride = -(-n // 4) * 4
        self.header_bytes = 20 * stride + 16  # positions, slots, context lengths, control
        self.row_bytes = 4 * w  # one block table
        self.raw = torch.zeros(self.header_bytes + n * self.row_bytes, dtype=torch.uint8, device=device,
                               pin_memory=pin)
        self.positions = self.raw[: 8 * stride].view(torch.int64)[:n]
        self.slots = self.raw[8 * stride: 16 * stride].view(torch.int64)[:n]
        self.context_lens = self.raw[16 * stride: 20 * stride].view(torch.int32)[:n]
        self.token_offset = self.raw[20 * stride: 20 * stride + 4].view(torch.int32)
        self.block_tables = self.raw[self.header_bytes:].view(torch.int32).view(n, w)

    def used_bytes(self, num_tables: int) -> int:
        """Bytes from the start through the first ``num_tables`` block tables."""
        return self.header_bytes + num_tables * self.row_bytes


@dataclass
class StagingSet:
    """One launch's host buffers."""

    input_ids: torch.Tensor  # int64 [max_num_seqs]: decode tokens the host knows
    decode: PackedDecodeInputs  # the rest of a decode step's inputs
    tokens: torch.Tensor  # int64 [max_num_seqs]: sampled tokens, copied back (or written by a graph)
    sampling_params: torch.Tensor  # uint8: per-row sampling parameters, packed (sampler_inputs)
    ready: torch.cuda.Event | None  # recorded after the launch's last copy or kernel; None off CUDA


class HostStaging:
    """Two ``StagingSet``s; ``flip()`` at each launch, then use ``current``."""

    def __init__(self, max_num_seqs: int, max_blocks_per_seq: int, sampling_params_bytes: int, pin: bool):
        n = max_num_seqs
        self.parity = 0
        # Both sets' sampled tokens in one buffer: a decode graph captures one address and writes
        # each replay's tokens at the set's offset (PackedDecodeInputs.token_offset).
        self.tokens_both = torch.zeros(2 * n, dtype=torch.int64, pin_memory=pin)
        self.sets = [
            StagingSet(
                input_ids=torch.zeros(n, dtype=torch.int64, pin_memory=pin),
                decode=PackedDecodeInputs(n, max_blocks_per_seq, pin=pin),
                tokens=self.tokens_both[i * n: (i + 1) * n],
                sampling_params=torch.zeros(sampling_params_bytes, dtype=torch.uint8, pin_memory=pin),
                ready=torch.cuda.Event() if pin else None,
            )
            for i in range(2)
        ]
        for i, s in enumerate(self.sets):
            s.decode.token_offset[0] = i * n

    def flip(self) -> None:
        """Switch to the other set: call once per launch, before filling anything."""
        self.parity ^= 1

    @property
    def current(self) -> StagingSet:
        return self.sets[self.parity]
