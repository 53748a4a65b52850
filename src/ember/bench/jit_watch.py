"""Which Triton kernels were built while a timed region ran.

A kernel specialisation first met inside a timed region (a new constexpr, or an integer argument
that becomes 1 or divisible by 16) is compiled, or loaded from Triton's disk cache, on the spot:
0.1-1 s that reads as a slow step. Session 4 found one in the offline throughput run by hand
(benchmarks/NOTES.md); with this watch every run reports them.
"""

from __future__ import annotations

import threading
import time

import triton


class TritonBuildWatch:
    """Context manager: ``builds`` lists {"kernel", "seconds"} for each specialisation built inside.

    Chains to hooks installed before it and restores them on exit.
    """

    def __init__(self):
        self.builds: list[dict] = []
        self._started = threading.local()  # a build's start, per thread (the server builds on its own)

    def __enter__(self) -> TritonBuildWatch:
        runtime = triton.knobs.runtime
        self._saved = (runtime.jit_cache_hook, runtime.jit_post_compile_hook)
        runtime.jit_cache_hook, runtime.jit_post_compile_hook = self._before_build, self._after_build
        return self

    def __exit__(self, *exc) -> None:
        runtime = triton.knobs.runtime
        runtime.jit_cache_hook, runtime.jit_post_compile_hook = self._saved

    def _before_build(self, **kwargs):
        # Called on a cache miss, before the build; a true answer would skip the build, so only
        # an earlier hook's answer is passed on.
        self._started.at = time.perf_counter()
        return self._saved[0](**kwargs) if self._saved[0] else None

    def _after_build(self, **kwargs):
        start = getattr(self._started, "at", None)
        self.builds.append({"kernel": kwargs["fn"].name,
                            "seconds": None if start is None else time.perf_counter() - start})
        if self._saved[1]:
            self._saved[1](**kwargs)

    def summary(self) -> str:
        """"none", or each kernel with its build count and seconds."""
        if not self.builds:
            return "none"
        per_kernel: dict[str, list[float]] = {}
        for b in self.builds:
            per_kernel.setdefault(b["kernel"], []).append(b["seconds"] or 0.0)
        return ", ".join(f"{name} ×{len(s)} ({sum(s):.2f} s)" for name, s in sorted(per_kernel.items()))
