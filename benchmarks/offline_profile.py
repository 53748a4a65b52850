"""Where the offline benchmark's steps spend their GPU time, kernel by kernel (GPU only).

Runs `throughput.py`'s workload (nano-vllm's: 256 requests, lengths in [100, 1024], seed 0)
once, untimed, with the torch profiler on for a few windows of consecutive engine steps. Per
window it reports the wall time per step, the GPU's busy time per step, the KV-cache bytes the
decode rows read (sum of their context lengths) and that floor at a copy rate measured in the
same run, and the kernels sorted by time per step. Steps of a window are whole `engine.step()`
calls; with async scheduling each one's GPU work is mostly the batch launched one step earlier.

    python benchmarks/offline_profile.py -m /tmp/qwen3-0.6B --windows 8:4,150:4,700:4 --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ember import LLM, SamplingParams
from ember.bench.ceilings import copy_rate as measure_copy_rate
from ember.bench.stats import now

sys.path.insert(0, str(Path(__file__).parent))
import throughput  # noqa: E402  benchmarks/throughput.py: the workload


def kv_bytes_per_token(cfg, dtype: torch.dtype) -> int:
    """K and V of every layer, in the cache's dtype."""
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * dtype.itemsize


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--windows", default="8:4,150:4,700:4", help="START:COUNT of engine steps, comma-separated")
    p.add_argument("--top", type=int, default=14)
    p.add_argument("--num-requests", type=int, default=256)
    p.add_argument("--min-len", type=int, default=100)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=throughput.NANO_VLLM_TEMPERATURE)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    windows = [tuple(map(int, w.split(":"))) for w in a.windows.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: a smoke test only
    copy_rate = measure_copy_rate(device)["bytes_per_s"]
    prompts, out_lens = throughput.workload(a.num_requests, a.min_len, a.max_len, 0)
    llm = LLM(a.model, load_format="dummy", device=str(device), max_model_len=max(map(len, prompts)) + max(out_lens),
              max_num_seqs=256, seed=0, progress=False)
    engine = llm.engine
    per_token = kv_bytes_per_token(engine.config, engine.dtype)
    params = [SamplingParams(temperature=a.temperature, max_tokens=n, ignore_eos=True, seed=i)
              for i, n in enumerate(out_lens)]
    step, index, results, active = engine.step, [0], [], {}

    def profiled_step():
        i = index[0]
        index[0] += 1
        for start, count in windows:
            if i == start:
                active["prof"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                active["prof"].__enter__()
                active.update(t0=now(device), rows=0, prompt=0, kv_tokens=0, count=count, start=start)
        outputs = step()
        batch = engine._last_batch
        if "prof" in active and batch is not None:
            for s, n in zip(batch.seqs, batch.num_new_tokens):
                if n == 1:
                    active["rows"] += 1
                    active["kv_tokens"] += s.num_cached_tokens  # after the step: its context
                else:
                    active["prompt"] += n
            if i == active["start"] + active["count"] - 1:
                wall = now(device) - active["t0"]
                prof = active.pop("prof")
                prof.__exit__(None, None, None)
                results.append(summarize(prof, active, wall, copy_rate, per_token, a.top))
                print(json.dumps({k: v for k, v in results[-1].items() if k != "kernels"}))
                for k in results[-1]["kernels"][:a.top]:
                    print(f"   {k['us_per_step']:9.1f} us/step  x{k['calls_per_step']:5.1f}  {k['name'][:90]}")
        return outputs

    engine.step = profiled_step
    llm.generate(prompts, params, use_tqdm=False)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "offline_profile.json").write_text(json.dumps(
        {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
         "copy_rate": copy_rate,
         "model": a.model, "windows": results}, indent=1))
    return results


def summarize(prof, w: dict, wall: float, copy_rate: float, per_token: int, top: int) -> dict:
    n = w["count"]
    kernels: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    busy = 0.0
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            kernels[e.name][0] += 1
            kernels[e.name][1] += e.device_time
            busy += e.device_time
    rows = sorted(({"name": k, "calls_per_step": c / n, "us_per_step": t / n} for k, (c, t) in kernels.items()),
                  key=lambda r: -r["us_per_step"])
    kv = w["kv_tokens"] * per_token
    return {"first_step": w["start"], "steps": n, "decode_rows_per_step": w["rows"] / n,
            "prompt_tokens_per_step": w["prompt"] / n, "wall_ms_per_step": 1e3 * wall / n,
            "gpu_busy_ms_per_step": busy / 1e3 / n, "kv_read_gb_per_step": kv / 1e9 / n,
            "kv_floor_ms_per_step": 1e3 * kv / copy_rate / n, "kernels": rows[:max(top, 30)]}


if __name__ == "__main__":
    main()
