"""Per-row sampling parameters packed into one staging buffer: the values are bit for bit those
of a tensor built from the Python values, every field is aligned like a fresh allocation, and
a smaller or different batch after a larger one reads none of the earlier rows."""

from __future__ import annotations

import random

import torch

from ember import SamplingParams
from ember.engine.sampler_inputs import PENALTY_FIELDS, SAMPLING_FIELDS, packed_bytes, stage_row_params
from ember.engine.sequence import Sequence

MAX_NUM_SEQS = 9
FIELDS = SAMPLING_FIELDS + PENALTY_FIELDS


def random_seqs(rng: random.Random, n: int) -> list[Sequence]:
    seqs = []
    for _ in range(n):
        params = SamplingParams(
            temperature=rng.choice([0.0, 0.1, 0.7, 1.0, 1.3 + rng.random()]),
            top_k=rng.choice([0, -1, 1, 20, 2**31 - 1, 2**40]),  # the last is clamped to 0
            top_p=rng.choice([1.0, 0.9, rng.random() or 0.5]),
            min_p=rng.choice([0.0, 0.05, rng.random()]),
            presence_penalty=rng.choice([0.0, 0.5, -1.7]),
            frequency_penalty=rng.choice([0.0, 0.4, 1 / 3]),
            repetition_penalty=rng.choice([1.0, 1.3, 0.1 + rng.random()]),
            seed=rng.choice([0, 7, 2**62 + 3, -(2**63), 2**63 - 1, 2**70]),  # 2**70 wraps
        )
        s = Sequence([1, 2, 3], params, seed=params.seed)
        s.token_ids += [5] * rng.randrange(0, 40)  # num_output_tokens: the RNG step
        seqs.append(s)
    return seqs


def expected(seqs: list[Sequence], name: str, dtype: torch.dtype) -> torch.Tensor:
    """The tensor the runner used to build for this parameter, one torch.tensor per step."""
    get = {"seeds": lambda s: s.seed, "steps": lambda s: s.num_output_tokens}.get(
        name, lambda s: getattr(s.params, name))
    return torch.tensor([get(s) for s in seqs], dtype=dtype)


def test_packed_values_layout_and_reuse_across_batches():
    host = torch.zeros(packed_bytes(MAX_NUM_SEQS), dtype=torch.uint8)
    device_buffer = torch.zeros_like(host)
    rng = random.Random(0)
    # Full, then smaller, odd and single batches, and each subset of fields, all through the
    # same buffers: stale rows of an earlier batch must never show.
    for step, n in enumerate([MAX_NUM_SEQS, 3, 1, 7, 2, MAX_NUM_SEQS, 5]):
        fields = (FIELDS, SAMPLING_FIELDS, PENALTY_FIELDS)[step % 3]
        seqs = random_seqs(rng, n)
        got = stage_row_params(seqs, fields, host, device_buffer)
        assert list(got) == [name for name, _, _ in fields]
        base = device_buffer.data_ptr()
        for name, dtype, _ in fields:
            t = got[name]
            want = expected(seqs, name, dtype)
            assert t.dtype == dtype and t.shape == (n,) and t.is_contiguous()
            assert torch.equal(t, want), name
            assert t.view(torch.uint8).tolist() == want.view(torch.uint8).tolist()  # bit for bit
            assert (t.data_ptr() - base) % 16 == 0  # aligned like a fresh allocation
            assert base <= t.data_ptr() and t.data_ptr() + t.nbytes <= base + device_buffer.nbytes
        # One copy: what the device holds is the host staging's prefix, byte for byte.
        end = max(t.data_ptr() + t.nbytes for t in got.values()) - base
        assert torch.equal(device_buffer[:end], host[:end])


def test_capacity_holds_every_field_for_max_num_seqs():
    for n in (1, 2, 3, 8, 255, 256):
        widths = [-(-n * dtype.itemsize // 16) * 16 for _, dtype, _ in FIELDS]
        assert packed_bytes(n) == sum(widths) >= n * 44
    seqs = random_seqs(random.Random(1), 5)
    host = torch.zeros(packed_bytes(5), dtype=torch.uint8)
    got = stage_row_params(seqs, FIELDS, host, torch.zeros_like(host))  # fits exactly
    assert all(torch.equal(got[name], expected(seqs, name, dtype)) for name, dtype, _ in FIELDS)
