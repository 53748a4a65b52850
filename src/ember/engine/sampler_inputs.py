"""A step's per-row sampling parameters on the device, in one host-to-device copy.

A sampled step needs up to nine small per-row tensors (temperature, top-k, top-p, min-p, RNG
seed and step; presence, frequency and repetition penalties). Built one by one, each would be
its own pinned allocation and copy. Instead they are packed into the launch's pinned
``StagingSet.sampling_params`` (reused safely, see host_staging) and copied in one go into a
preallocated device buffer, of which each parameter is a view.
"""

from __future__ import annotations

import numpy as np
import torch

from ember.engine.sequence import Sequence

# (name, dtype, the value for a sequence). The values are exactly those a torch.tensor of
# the Python values would hold.
SAMPLING_FIELDS = (
    ("temperature", torch.float32, lambda s: s.params.temperature),
    ("top_k", torch.int32, lambda s: s.params.top_k),
    ("top_p", torch.float32, lambda s: s.params.top_p),
    ("min_p", torch.float32, lambda s: s.params.min_p),
    ("seeds", torch.int64, lambda s: s.seed),
    # The RNG step is the number of tokens generated before this one, pending ones included.
    ("steps", torch.int64, lambda s: s.num_output_tokens),
)
PENALTY_FIELDS = (
    ("presence_penalty", torch.float32, lambda s: s.params.presence_penalty),
    ("frequency_penalty", torch.float32, lambda s: s.params.frequency_penalty),
    ("repetition_penalty", torch.float32, lambda s: s.params.repetition_penalty),
)
_NUMPY_DTYPE = {torch.float32: np.float32, torch.int32: np.int32, torch.int64: np.int64}
# Every field starts 16-byte aligned, like a fresh allocation: Triton specializes kernels on
# pointer alignment, so a less aligned view would compile (and run) other kernel variants.
_ALIGN = 16


def _layout(fields, num_rows: int) -> tuple[list[int], int]:
    """Byte offset of each field for ``num_rows`` rows, and the bytes in use."""
    offsets, end = [], 0
    for _, dtype, _ in fields:
        offsets.append(end)
        end += -(-num_rows * dtype.itemsize // _ALIGN) * _ALIGN
    return offsets, end


def packed_bytes(max_num_seqs: int) -> int:
    """Staging size that holds every field for up to ``max_num_seqs`` rows."""
    return _layout(SAMPLING_FIELDS + PENALTY_FIELDS, max_num_seqs)[1]


def stage_row_params(seqs: list[Sequence], fields, host: torch.Tensor, device_buffer: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
    """Each of ``fields`` for every sequence, on the device: packed into the uint8 ``host``
    buffer (pinned on CUDA), copied into ``device_buffer`` without waiting, and returned as
    name -> 1-D view of it."""
    b = len(seqs)
    offsets, end = _layout(fields, b)
    packed = host.numpy()
    # A float past fp32's range (a temperature of 1e300, say) becomes inf, as torch.tensor
    # would make it; numpy would also warn about it.
    with np.errstate(over="ignore"):
        for (_, dtype, value), offset in zip(fields, offsets):
            np_dtype = _NUMPY_DTYPE[dtype]
            packed[offset : offset + b * dtype.itemsize].view(np_dtype)[:] = np.fromiter(map(value, seqs), np_dtype, b)
    device_buffer[:end].copy_(host[:end], non_blocking=True)
    return {name: device_buffer[offset : offset + b * dtype.itemsize].view(dtype)
            for (name, dtype, _), offset in zip(fields, offsets)}
