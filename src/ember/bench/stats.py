"""Summaries of repeated measurements, and a wall clock that waits for the device."""

from __future__ import annotations

import resource
import statistics
import time

import torch


def summarize(values: list[float]) -> dict:
    """Median and spread (min/max) of the reps, with the raw values kept for later analysis."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device | str) -> float:
    """perf_counter after the device has finished everything queued so far."""
    sync(device)
    return time.perf_counter()


def reset_peak_memory(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak allocated device memory since the last reset; on CPU the process's peak RSS
    (it cannot be reset, so on CPU it is a lifetime high-water mark)."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
