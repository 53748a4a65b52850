"""benchmarks/decode_timeline.py: the device timeline built from profiler events, with idle
gaps and overlapping operations counted once (the profiling itself needs a GPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "decode_timeline.py"
spec = importlib.util.spec_from_file_location("decode_timeline", SCRIPT)
decode_timeline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(decode_timeline)


def test_gaps_and_busy_time():
    ops = [(1_000, 3_000, "graph kernel"), (2_000, 2_500, "overlapping kernel"),  # PDL overlap
           (9_000, 10_000, "Memcpy DtoH"), (12_500, 13_000, "Memcpy HtoD"), (13_000, 14_000, "next kernel")]
    timeline, busy, span = decode_timeline.device_timeline(ops)
    assert span == 13_000 and busy == 2_000 + 1_000 + 500 + 1_000
    gaps = [t for t in timeline if "gap_us" in t]
    assert gaps == [{"gap_us": 6.0, "at_us": 2.0}, {"gap_us": 2.5, "at_us": 9.0}]
    names = [t["op"] for t in timeline if "op" in t]
    assert names == [name for _, _, name in ops]
    assert timeline[0] == {"op": "graph kernel", "start_us": 0.0, "us": 2.0}
