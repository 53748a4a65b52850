"""First decode timing (eager, no CUDA graphs): tok/s at batch 1 against the copy-rate roofline.

A stopgap until `ember bench` (issue #3): measures the device copy rate in the same run and
prints decode tok/s as a share of weights-bytes / copy-rate.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from ember import LLM, SamplingParams
from ember.tools.random_checkpoint import QWEN3_SHAPES, qwen3_config

TOKENIZER = Path(__file__).parents[1] / "tests" / "data" / "qwen3-tokenizer"


def copy_rate() -> float:
    x = torch.randn(1 << 30, device="cuda", dtype=torch.float16)  # 2 GiB
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * 2 * 10 / (time.perf_counter() - t)  # bytes read + written per second


def main():
    rate = copy_rate()
    print(f"device {torch.cuda.get_device_name()} copy rate {rate / 1e12:.2f} TB/s")
    for shape in os.environ.get("EMBER_BENCH_SHAPES", "0.6B,8B").split(","):
        with tempfile.TemporaryDirectory() as d:
            import json, shutil

            cfg = qwen3_config(**QWEN3_SHAPES[shape])
            (Path(d) / "config.json").write_text(json.dumps(cfg))
            for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
                shutil.copy(TOKENIZER / f, Path(d) / f)
            llm = LLM(d, load_format="dummy", device="cuda", max_model_len=4096, max_num_seqs=1, progress=False)
            weight_bytes = sum(p.numel() * p.element_size() for p in llm.engine.model.parameters())
            p = SamplingParams(temperature=0, max_tokens=256, ignore_eos=True)
            ids = list(range(1000, 1128))
            llm.generate([ids], p, use_tqdm=False)  # warm-up (Triton compiles)
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = llm.generate([ids], p, use_tqdm=False)[0]
            dt = time.perf_counter() - t
            tps = len(out.token_ids) / dt
            roof = rate / weight_bytes
            print(f"Qwen3-{shape} eager batch 1: {tps:.1f} tok/s (incl. prefill), roofline {roof:.0f} tok/s, {100 * tps / roof:.1f}%")
            del llm
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
