"""Decode timing at batch 1, eager and with CUDA graphs, against the copy-rate roofline.

A stopgap until `ember bench` (issue #3): measures the device copy rate in the same run and
prints decode tok/s as a share of weights-bytes / copy-rate. Both modes run the same dummy
weights (same seed) in the same process; their greedy tokens are compared too.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ember import LLM, SamplingParams
from ember.tools.random_checkpoint import QWEN3_SHAPES, qwen3_config

TOKENIZER = Path(__file__).parents[1] / "tests" / "data" / "qwen3-tokenizer"
NEW_TOKENS = 256


def prompt(k: int) -> list[int]:
    """The k-th 128-token prompt; each differs from the first token on, so none hits the prefix cache."""
    return list(range(1000 + 200 * k, 1128 + 200 * k))


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


def timed_generate(llm: LLM, k: int, max_tokens: int) -> tuple[float, list[int]]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = llm.generate([prompt(k)], params, use_tqdm=False)[0]
    return time.perf_counter() - t, out.token_ids


def measure(folder: str, enforce_eager: bool) -> dict:
    start = time.perf_counter()
    llm = LLM(folder, load_format="dummy", device="cuda", max_model_len=4096, max_num_seqs=1, progress=False,
              enforce_eager=enforce_eager)
    setup_s = time.perf_counter() - start  # includes graph capture
    weight_bytes = sum(p.numel() * p.element_size() for p in llm.engine.model.parameters())
    timed_generate(llm, 0, NEW_TOKENS)  # warm-up (Triton compiles)
    total_s, tokens = timed_generate(llm, 1, NEW_TOKENS)
    first_s = min(timed_generate(llm, k, 1)[0] for k in (2, 3, 4))  # prefill + first token
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    decode_s = (total_s - first_s) / (len(tokens) - 1)  # per token after the first
    return dict(weight_bytes=weight_bytes, setup_s=setup_s, tokens=tokens, tok_s=len(tokens) / total_s,
                decode_tok_s=1 / decode_s, ms_per_token=1e3 * decode_s)


def main():
    rate = copy_rate()
    print(f"device {torch.cuda.get_device_name()} copy rate {rate / 1e12:.2f} TB/s")
    for shape in os.environ.get("EMBER_BENCH_SHAPES", "0.6B,8B").split(","):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "config.json").write_text(json.dumps(qwen3_config(**QWEN3_SHAPES[shape])))
            for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
                shutil.copy(TOKENIZER / f, Path(d) / f)
            results = {mode: measure(d, enforce_eager=mode == "eager") for mode in ("eager", "graphs")}
        roof = rate / results["eager"]["weight_bytes"]
        for mode, r in results.items():
            print(f"Qwen3-{shape} {mode:6s} batch 1: {r['tok_s']:.1f} tok/s (incl. prefill), "
                  f"{r['decode_tok_s']:.1f} tok/s decode only ({r['ms_per_token']:.2f} ms/token), "
                  f"roofline {roof:.0f} tok/s: {100 * r['tok_s'] / roof:.1f}% / {100 * r['decode_tok_s'] / roof:.1f}%, "
                  f"set-up {r['setup_s']:.1f} s")
        same = results["eager"]["tokens"] == results["graphs"]["tokens"]
        speedup = results["graphs"]["decode_tok_s"] / results["eager"]["decode_tok_s"]
        print(f"Qwen3-{shape} graphs vs eager: {speedup:.1f}x decode, greedy tokens identical: {same}")


if __name__ == "__main__":
    main()
