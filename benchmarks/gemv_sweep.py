"""Skinny-GEMM sweep: cuBLAS against Ember's Triton kernel at Qwen3 decode shapes, M = 1..16.

    python benchmarks/gemv_sweep.py --out benchmarks/results/gemv-sweep-h200.json

For each projection of Qwen3 0.6B..32B (qkv, o, gate_up, down) and its fused forms (o and down
with the residual add in the epilogue, qkv with the folded RMSNorm's 1 / rms in the epilogue,
gate_up with both that and silu * mul) and each M: the alternative (cuBLAS for a plain projection; for a fused
form, the unfused kernels as Ember runs them with today's table) and every Triton config of a
candidate grid plus the shape heuristic's. Each is timed as CUDA-graph replays of
one call per weight copy, with enough copies (>= 4, >= 256 MB) that L2 never holds the weight
being read; time per call = replay time / calls. Every Triton result is checked against the
reference (relative Frobenius error). Prints a table (shares of the copy rate measured in this
run, read + written) and a dict to paste into SKINNY_TABLE in src/ember/ops/skinny_table.py; writes
all numbers as JSON to --out. About 2-3 minutes on an H200, most of it Triton compiles.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from ember.bench.ceilings import copy_rate
from ember.bench.stats import graph_us
from ember.ops.activation import silu_mul
from ember.ops.linear import (
    ResidualStream,
    SkinnyConfig,
    linear_add_triton,
    linear_silu_mul_triton,
    linear_triton,
    rms_norm_linear_reference,
    rms_norm_linear_triton,
)
from ember.ops.norm import rms_norm
from ember.tools.random_checkpoint import QWEN3_SHAPES

skinny = importlib.import_module("ember.ops.linear")  # the module: ember.ops.linear is the op

HEAD_DIM = 128  # every Qwen3 dense model
MS = [1, 2, 4, 8, 16]
C = SkinnyConfig
GRID = [  # (block_n, block_k, split_k, num_warps, num_stages, dot)
    C(16, 256, 1, 4, 4, True), C(16, 512, 1, 4, 3, True), C(32, 256, 1, 4, 4, True),
    C(32, 128, 1, 4, 4, True), C(64, 128, 1, 4, 4, True), C(64, 256, 1, 4, 3, True),
    C(128, 128, 1, 8, 3, True),
    C(16, 256, 2, 4, 4, True), C(16, 256, 4, 4, 4, True), C(16, 128, 8, 4, 4, True),
    C(32, 256, 2, 4, 4, True), C(32, 256, 4, 4, 4, True), C(64, 128, 2, 4, 4, True), C(64, 128, 4, 4, 4, True),
    # session 4: deeper pipelines, wider K steps and 8 warps, for the 8B projections at M = 1
    C(32, 512, 1, 4, 3, True), C(64, 256, 2, 4, 3, True), C(32, 256, 2, 4, 5, True), C(64, 128, 1, 8, 6, True),
    C(128, 256, 1, 8, 3, True), C(16, 512, 2, 4, 4, True), C(32, 128, 2, 4, 6, True), C(64, 64, 2, 4, 8, True),
    # CUDA-core FMAs: only tried at M <= FMA_MAX_M, where padding x to 16 rows wastes the most
    C(4, 512, 1, 4, 3, False), C(8, 256, 1, 4, 3, False), C(8, 512, 2, 4, 3, False), C(16, 256, 1, 8, 3, False),
    C(4, 1024, 1, 4, 3, False), C(8, 512, 1, 4, 4, False), C(16, 512, 1, 8, 3, False),
]
FMA_MAX_M = 4
MIN_COPIES, MIN_ROTATION_BYTES, MAX_COPIES = 4, 256 << 20, 64
TRIALS, REPLAYS = 3, 10
BAD_REL_ERR = 1e-2  # bf16: fp32 accumulation + one output rounding stays far below this


def projections(models: list[str]) -> list[tuple[str, str, int, int, list[str]]]:
    """(op, proj, N, K, models) for each distinct projection shape of the given models."""
    seen: dict[tuple, list[str]] = {}
    for model in models:
        s = QWEN3_SHAPES[model]
        h, i = s["hidden_size"], s["intermediate_size"]
        q, kv = s["num_attention_heads"] * HEAD_DIM, s["num_key_value_heads"] * HEAD_DIM
        for op, proj, n, k in [("linear", "qkv", q + 2 * kv, h), ("linear", "o", h, q), ("linear", "gate_up", 2 * i, h),
                               ("linear", "down", h, i), ("linear_add", "o+add", h, q),
                               ("linear_add", "down+add", h, i), ("rms_norm_linear", "norm+qkv", q + 2 * kv, h),
                               ("gate_silu", "gu+silu", 2 * i, h), ("rms_norm_gate_silu", "norm+gu+silu", 2 * i, h)]:
            seen.setdefault((op, proj, n, k), []).append(model)
    return [(*key, models) for key, models in seen.items()]


def candidates(m: int, n: int, k: int, op: str) -> list[SkinnyConfig]:
    heuristic = skinny._heuristic_config(m, n, k)
    out = [heuristic]
    grid = GRID
    if op.startswith("rms_norm"):  # x computed in registers: also try it as the left operand
        grid = GRID + [c._replace(x_left=True) for c in GRID if c.dot]
    for cfg in grid:
        blocks = triton.cdiv(n, cfg.block_n)
        block_m = max(16, triton.next_power_of_2(m)) if cfg.dot else triton.next_power_of_2(m)
        if (cfg == heuristic or (not cfg.dot and m > FMA_MAX_M) or cfg.block_n > n
                or k % (cfg.block_k * cfg.split_k)  # uneven K: the heuristic never picks it
                or (cfg.split_k > 1 and blocks >= 256)  # already enough programs to fill the GPU
                or cfg.split_k * blocks * cfg.block_n * block_m > skinny._WORKSPACE_FLOATS):
            continue
        out.append(cfg)
    return out


def time_per_call(fn, x, weights) -> float:
    """Microseconds per call: a CUDA graph of one call per weight copy, median of TRIALS timings."""
    return graph_us(lambda: [fn(x, w) for w in weights], len(weights), REPLAYS, TRIALS)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def fmt(cfg) -> str:
    if cfg is None:
        return "cuBLAS"
    kind = ("dotL" if cfg.x_left else "dot") if cfg.dot else "fma"
    return f"{cfg.block_n}x{cfg.block_k} s{cfg.split_k} w{cfg.num_warps} st{cfg.num_stages} {kind}"


def sweep_shape(op, n, k, ms, rate, log) -> list[dict]:
    wbytes = n * k * 2
    copies = min(MAX_COPIES, max(MIN_COPIES, math.ceil(MIN_ROTATION_BYTES / wbytes)))
    weights = [torch.empty(n, k, dtype=torch.bfloat16, device="cuda").normal_(0, 0.02) for _ in range(copies)]
    norm_w = (1 + 0.2 * torch.randn(k, device="cuda")).to(torch.bfloat16)
    silu = op in ("gate_silu", "rms_norm_gate_silu")
    n_out = n // 2 if silu else n
    # x = (input, residual or the stream's row statistics): 256 blocks, the most a producer stores.

    def stream(x):
        return ResidualStream(x[0], None, x[1])

    def reference(x, w):
        if op == "linear_add":
            return F.linear(x[0], w) + x[1]
        if op in ("rms_norm_linear", "rms_norm_gate_silu"):
            # The weights stand for folded ones (W * g): the kernel scales the plain product by 1 / rms.
            return rms_norm_linear_reference(ResidualStream(x[0]), norm_w, 1e-6, w, silu_mul=silu, norm_folded=True)[0]
        return silu_mul(F.linear(x[0], w)) if silu else F.linear(x[0], w)

    def alternative(x, w):  # cuBLAS, or the unfused path as Ember runs it with the current table
        if op == "linear_add":  # the add then runs inside the next norm kernel, at no extra cost
            return skinny.linear(x[0], w)
        if op in ("rms_norm_linear", "rms_norm_gate_silu"):
            y = skinny.linear(rms_norm(x[0], norm_w, 1e-6), w)
            return silu_mul(y) if silu else y
        return silu_mul(skinny.linear(x[0], w)) if silu else F.linear(x[0], w)

    def kernel(cfg):
        if op == "linear_add":
            return lambda x, w: linear_add_triton(x[0], w, x[1], config=cfg).hidden
        if op in ("rms_norm_linear", "rms_norm_gate_silu"):
            return lambda x, w: rms_norm_linear_triton(stream(x), norm_w, 1e-6, w, silu_mul=silu, norm_folded=True,
                                                       config=cfg)[0]
        if silu:
            return lambda x, w: linear_silu_mul_triton(x[0], w, config=cfg)
        return lambda x, w: linear_triton(x[0], w, config=cfg)

    def pct(us, m):  # share of the copy rate: weight + x read, y written
        return 100 * (wbytes + 2 * m * (k + n_out)) / (us * 1e-6) / rate

    rows = []
    for m in ms:
        x0 = torch.randn((m, k), device="cuda").to(torch.bfloat16)
        if op == "linear_add":
            x = (x0, torch.randn((m, n), device="cuda").to(torch.bfloat16))
        else:
            x = (x0, (x0.float().pow(2).sum(-1) / 256).expand(256, m).contiguous())
        ref = reference(x, weights[0])
        # "cublas_us": the alternative the kernel must beat (for a fused op: the unfused path)
        row = {"op": op, "n": n, "k": k, "m": m, "copies": copies,
               "cublas_us": time_per_call(alternative, x, weights), "configs": []}
        row["cublas_pct"] = pct(row["cublas_us"], m)
        for cfg in candidates(m, n, k, op):
            entry = {"config": list(cfg), "heuristic": cfg == skinny._heuristic_config(m, n, k)}
            try:
                t0 = time.perf_counter()
                entry["rel_err"] = rel_err(kernel(cfg)(x, weights[0]), ref)
                entry["us"] = time_per_call(kernel(cfg), x, weights)
                entry["pct"] = pct(entry["us"], m)
                entry["wall_s"] = time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 -- one failing config (e.g. out of shared memory) must not end the sweep
                entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                log(f"    M={m} {fmt(cfg)}: {entry['error']}")
            row["configs"].append(entry)
        ok = [e for e in row["configs"] if "us" in e and e["rel_err"] < BAD_REL_ERR]
        for e in row["configs"]:
            if "us" in e and e["rel_err"] >= BAD_REL_ERR:
                log(f"    M={m} {fmt(C(*e['config']))}: WRONG, relative error {e['rel_err']:.2e}")
        row["best"] = min(ok, key=lambda e: e["us"]) if ok else None
        row["heuristic"] = next((e for e in row["configs"] if e["heuristic"] and "us" in e), None)
        rows.append(row)
    del weights
    torch.cuda.empty_cache()
    return rows


def decide(rows: list[dict]) -> dict:
    """SKINNY_TABLE entries: the best config where it beats the alternative, else None."""
    table = {}
    for r in rows:
        best = r["best"]
        win = best is not None and best["us"] < r["cublas_us"]
        table[(r["op"], r["n"], r["k"], r["m"])] = tuple(best["config"]) if win else None
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON results file")
    ap.add_argument("--models", default=",".join(QWEN3_SHAPES), help="comma-separated, of " + ",".join(QWEN3_SHAPES))
    ap.add_argument("--ms", default=",".join(map(str, MS)), help="row counts (powers of two: table buckets)")
    ap.add_argument("--ops", default=",".join(skinny.OPS), help="which ops to sweep, of " + ",".join(skinny.OPS))
    args = ap.parse_args()
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    ms = [int(m) for m in args.ms.split(",")]
    rate = copy_rate(torch.device("cuda"))["bytes_per_s"]
    log(f"{torch.cuda.get_device_name()}: copy rate {rate / 1e12:.2f} TB/s (2 GiB, read + written); "
        f"torch {torch.__version__}, triton {triton.__version__}")
    rows = []
    for op, proj, n, k, models in projections(args.models.split(",")):
        if op not in args.ops.split(","):
            continue
        log(f"{'/'.join(models)} {proj} {n}x{k} ...")
        for r in sweep_shape(op, n, k, ms, rate, log):
            rows.append({**r, "proj": proj, "models": models})

    table = decide(rows)
    print(f"\n{'model':>9} {'proj':>12} {'N':>6} {'K':>6} {'M':>3} | {'alt. us':>9} {'%':>4} | "
          f"{'best Triton':<26} {'us':>7} {'%':>4} | {'speedup':>7} | {'heur. us':>8} | table")
    for r in rows:
        b, h = r["best"], r["heuristic"]
        best = f"{fmt(C(*b['config'])):<26} {b['us']:7.2f} {b['pct']:3.0f}%" if b else f"{'(none ran)':<26} {'':12}"
        base = r["cublas_us"]
        speedup = f"{base / b['us']:6.2f}x" if b else f"{'':7}"
        entry = table[(r["op"], r["n"], r["k"], r["m"])]
        print(f"{'/'.join(r['models']):>9} {r['proj']:>12} {r['n']:6d} {r['k']:6d} {r['m']:3d} | "
              f"{base:9.2f} {r['cublas_pct']:3.0f}% | {best} | {speedup} | "
              f"{h['us'] if h else float('nan'):8.2f} | {'triton' if entry else 'fallback'}")
    print("\n# Paste into src/ember/ops/skinny_table.py (measured on "
          f"{torch.cuda.get_device_name()}, {rate / 1e12:.2f} TB/s copy rate):")
    print("SKINNY_TABLE: dict[tuple[str, int, int, int], tuple | None] = {")
    print("    # (op, N, K, M bucket): (block_n, block_k, split_k, num_warps, num_stages, dot), None = fallback")
    for (op, n, k, m), value in table.items():
        print(f'    ("{op}", {n}, {k}, {m}): {value!r},')
    print("}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": torch.cuda.get_device_name(), "copy_rate_bytes_per_s": rate, "torch": torch.__version__,
        "triton": triton.__version__, "command": " ".join(sys.argv), "grid": [list(c) for c in GRID],
        "results": rows, "table": [[list(key), value] for key, value in table.items()],
    }, indent=1))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
