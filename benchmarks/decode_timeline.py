"""Where a batch-1 decode step's time goes between CUDA graphs: a device timeline.

`ember bench` reports 0.93 ms per 0.6B token against a 0.87 ms graph. This profiles a few
steady decode steps of the engine's own loop and lists, in device-time order, every operation
on the GPU and every idle gap between them, with the host's runtime calls (graph launch,
copies, event waits) beside them, so a gap can be told apart as waiting for the host or for a
copy engine. Writes JSON (and prints a summary).

    python benchmarks/decode_timeline.py -m /tmp/qwen3-0.6B --load-format dummy --out DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ember import LLM, SamplingParams


def device_timeline(ops: list[tuple[int, int, str]]) -> tuple[list[dict], int, int]:
    """``ops`` (start ns, end ns, name), sorted by start: the timeline in µs from the first start,
    with an entry for every idle gap; the busy ns (overlaps counted once) and the span in ns."""
    t0 = ops[0][0]
    timeline, busy, end = [], 0, t0
    for s, e, name in ops:
        if s > end:
            timeline.append({"gap_us": (s - end) / 1e3, "at_us": (end - t0) / 1e3})
        busy += max(0, e - max(s, end))
        timeline.append({"op": name[:80], "start_us": (s - t0) / 1e3, "us": (e - s) / 1e3})
        end = max(end, e)
    return timeline, busy, end - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    llm = LLM(args.model, load_format=args.load_format, device="cuda", max_model_len=2048,
              max_num_seqs=max(args.batch_size, 8), progress=False, enable_prefix_caching=False)
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    for i in range(args.batch_size):
        engine.add_request([1000 + 7 * i + j for j in range(128)], params)
    for _ in range(30):  # prefill, then steady decode
        engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            engine.step()
        torch.cuda.synchronize()
    events = prof.profiler.kineto_results.events()
    gpu = sorted(((e.start_ns(), e.start_ns() + e.duration_ns(), e.name()) for e in events
                  if e.device_type() == DeviceType.CUDA), key=lambda t: t[0])
    host = sorted(((e.start_ns(), e.start_ns() + e.duration_ns(), e.name()) for e in events
                   if e.device_type() == DeviceType.CPU and e.name().startswith("cuda")), key=lambda t: t[0])
    timeline, busy, span = device_timeline(gpu)
    t0 = gpu[0][0]
    gaps = sorted((t for t in timeline if "gap_us" in t), key=lambda t: -t["gap_us"])
    host_calls = [{"call": n, "start_us": (s - t0) / 1e3, "us": (e - s) / 1e3} for s, e, n in host
                  if s >= t0 - 2_000_000 and n in ("cudaGraphLaunch", "cudaMemcpyAsync", "cudaEventSynchronize",
                                                    "cudaEventRecord", "cudaLaunchKernel", "cudaMemsetAsync",
                                                    "cudaStreamSynchronize", "cudaLaunchKernelExC")]
    summary = {"model": args.model, "batch_size": args.batch_size, "steps": args.steps,
               "span_us_per_step": span / 1e3 / args.steps, "busy_us_per_step": busy / 1e3 / args.steps,
               "idle_us_per_step": (span - busy) / 1e3 / args.steps,
               "gaps_over_1us_per_step": sum(1 for g in gaps if g["gap_us"] > 1) / args.steps,
               "largest_gaps": gaps[:30]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_timeline.json").write_text(json.dumps(
        {"summary": summary, "timeline": timeline, "host_calls": host_calls}, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "largest_gaps"}))
    # The ops around the ten largest gaps.
    index = {id(t): i for i, t in enumerate(timeline)}
    for g in gaps[:10]:
        i = index[id(g)]
        before = timeline[i - 1].get("op") if i > 0 else None
        after = timeline[i + 1].get("op") if i + 1 < len(timeline) else None
        print(f"gap {g['gap_us']:7.1f} us at {g['at_us']:9.1f}: after {before!s:.50} -> before {after!s:.50}")


if __name__ == "__main__":
    main()
