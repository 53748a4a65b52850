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


def graph_us(step, calls: int, reps: int = 20, trials: int = 5) -> float:
    """Median microseconds per call of ``step`` (which makes ``calls`` calls), captured once in a
    CUDA graph and replayed ``reps`` times per trial: the kernel sweeps' clock. ``step`` first runs
    once on a side stream, so Triton compiles and cuBLAS handles and workspaces exist before the
    capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    us = replay_us(graph, reps, trials) / calls
    del graph
    return us


def replay_us(graph, reps: int, trials: int) -> float:
    """Median over ``trials`` of the microseconds per replay of ``graph``, replayed ``reps`` times
    back to back between two CUDA events."""
    times = []
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    return statistics.median(times)
