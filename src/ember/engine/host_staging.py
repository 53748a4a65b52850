"""Host memory that a step's small host<->device copies go through.

On CUDA the buffers are pinned, so the copies run asynchronously (``non_blocking=True``) and
the host never waits for them. That makes reusing a buffer the hazard: it must not be refilled
while a copy out of (or into) it may still be pending. Hence two sets, used on alternate
launches: a set is refilled two launches later, when its copies are long done, because the
launch in between waited for this one's tokens (its ``ready`` event, recorded after every copy
of the launch) before going on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def copy_to_device(data, dtype: torch.dtype, device: torch.device, pin: bool) -> torch.Tensor:
    """``data`` (a list) on ``device`` without waiting: a fresh host tensor, pinned when ``pin``,
    copied with ``non_blocking``. For inputs whose size varies too much to stage."""
    t = torch.tensor(data, dtype=dtype, pin_memory=pin)
    return t.to(device, non_blocking=True)


@dataclass
class StagingSet:
    """One launch's host buffers."""

    rows: torch.Tensor  # int64 [4, max_num_seqs]: decode token, position, slot, context length
    tables: torch.Tensor  # int32 [max_num_seqs, max_blocks_per_seq]: decode block tables
    tokens: torch.Tensor  # int64 [max_num_seqs]: sampled tokens, copied back to the host
    sampling_params: torch.Tensor  # uint8: per-row sampling parameters, packed (sampler_inputs)
    ready: torch.cuda.Event | None  # recorded after the launch's last copy; None off CUDA


class HostStaging:
    """Two ``StagingSet``s; ``flip()`` at each launch, then use ``current``."""

    def __init__(self, max_num_seqs: int, max_blocks_per_seq: int, sampling_params_bytes: int, pin: bool):
        n = max_num_seqs
        self.parity = 0
        self.sets = [
            StagingSet(
                rows=torch.zeros(4, n, dtype=torch.int64, pin_memory=pin),
                tables=torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, pin_memory=pin),
                tokens=torch.zeros(n, dtype=torch.int64, pin_memory=pin),
                sampling_params=torch.zeros(sampling_params_bytes, dtype=torch.uint8, pin_memory=pin),
                ready=torch.cuda.Event() if pin else None,
            )
            for _ in range(2)
        ]

    def flip(self) -> None:
        """Switch to the other set: call once per launch, before filling anything."""
        self.parity ^= 1

    @property
    def current(self) -> StagingSet:
        return self.sets[self.parity]
