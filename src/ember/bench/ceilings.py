"""The hardware's ceilings, measured in the same run: copy bandwidth and matmul throughput.

Measured rather than taken from a datasheet, so each figure's share of its roofline is against
what this device, at its current clocks, can actually do. On CPU the sizes are tiny: the point
there is that the code path runs in CI, not the numbers.
"""

from __future__ import annotations

import time

import torch

from ember.bench.stats import summarize, sync

GPU_COPY_BYTES = 2 << 30  # 2 GiB: far past L2, so it measures HBM
CPU_COPY_BYTES = 16 << 20
GPU_MATMUL_N = 8192
CPU_MATMUL_N = 256


def _time_reps(fn, device: torch.device, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times


def copy_rate(device: torch.device, warmup: int = 3, reps: int = 10) -> dict:
    """Device-to-device copy: bytes read + written per second (median over reps)."""
    nbytes = GPU_COPY_BYTES if device.type == "cuda" else CPU_COPY_BYTES
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    times = _time_reps(lambda: dst.copy_(src), device, warmup, reps)
    rates = [2 * nbytes / t for t in times]
    src = dst = None  # free before the next measurement
    sync(device)
    return {"bytes": nbytes, "reps": reps, "rate_bytes_per_s": summarize(rates),
            "bytes_per_s": summarize(rates)["median"]}


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.bfloat16, warmup: int = 3, reps: int = 10) -> dict:
    """Square matmul in ``dtype``: FLOP/s (median over reps)."""
    n = GPU_MATMUL_N if device.type == "cuda" else CPU_MATMUL_N
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    times = _time_reps(lambda: torch.mm(a, b, out=out), device, warmup, reps)
    rates = [2 * n**3 / t for t in times]
    a = b = out = None  # free before the next measurement
    sync(device)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "reps": reps,
            "rate_flop_per_s": summarize(rates), "flop_per_s": summarize(rates)["median"]}


def higher(first: dict, second: dict, key: str) -> dict:
    """Of two measurements of one ceiling (``key``: "bytes_per_s" or "flop_per_s"), the higher,
    with both readings recorded under ``readings``. A run measures each ceiling before and after
    its configurations: one measurement alone has read 1.5-2% low on an H200 whose other runs
    agreed to 0.5%, which moved every share of the roofline in that run by as much."""
    best = max(first, second, key=lambda m: m[key])
    return {**best, "readings": [first[key], second[key]]}
