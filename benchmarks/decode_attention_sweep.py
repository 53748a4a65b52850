"""Decode attention at Qwen3 shapes: split count, minimum split length and merge mode (GPU only).

For each (shape, batch, context) it times ``paged_decode_attention_triton`` as the decode graph
runs it: one CUDA graph of back-to-back calls, each on its own layer's KV cache (enough layers
that the caches exceed L2, as weights would evict them in a real step), with PDL as the engine
launches it. Per call it reports µs and the share of the copy-rate floor (KV bytes read ÷ a
device copy rate measured in the same run). Every variant's output is checked against the
reference (bf16 tolerance) before it is timed.

"current" is the engine's choice: the auto split count, DECODE_MIN_TOKENS_PER_SPLIT and
decode_merge_mode. Variants: merge "kernel" (last-arriving split program) or "launch" (a second kernel), the
minimum tokens per split (DECODE_MIN_TOKENS_PER_SPLIT), and the split count (the engine's
decode_num_splits heuristic, or fixed).

``--fused`` instead times, at the engine's choice, what a decode layer runs between the qkv and o
projections: qk_norm_rope_store_kv + paged_decode_attention (two launches) against
norm_rope_decode_attention (one; the same outputs and cache writes).

    python benchmarks/decode_attention_sweep.py [--shapes 0.6B,8B] [--batch-sizes 1,8,32]
        [--contexts 128,512,2048,8192] [--fused] [--out decode_attention_sweep.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math

import torch

from ember.bench.ceilings import copy_rate as measure_copy_rate
from ember.bench.stats import graph_us
from ember.ops import decode_attention as attention
from ember.ops import rope
from ember.tools.random_checkpoint import QWEN3_SHAPES

BLOCK_SIZE = 16  # the engine's default
L2_EVICT_BYTES = 256 << 20  # the layers' caches together exceed L2 (50-60 MiB) several times


def make_case(num_q_heads, num_kv_heads, head_dim, batch, context, layers, gen, lens=None):
    """``lens`` (int32 [batch], each <= context): per-row context lengths, else all ``context``."""
    blocks_per_seq = math.ceil(context / BLOCK_SIZE)
    num_blocks = batch * blocks_per_seq
    tables = torch.randperm(num_blocks, generator=gen).view(batch, blocks_per_seq).int().cuda()
    caches = []
    for _ in range(layers):
        k = torch.randn(num_blocks, BLOCK_SIZE, num_kv_heads, head_dim, device="cuda", dtype=torch.bfloat16)
        caches.append((k, torch.randn_like(k)))
    q = torch.randn(batch, num_q_heads, head_dim, device="cuda", dtype=torch.bfloat16)
    if lens is None:
        lens = torch.full((batch,), context, dtype=torch.int32)
    return q, caches, tables, lens.cuda()


def time_graph(step, layers, reps=20):
    """Median µs per layer of one CUDA graph of ``step`` (all layers), replayed ``reps`` times."""
    return graph_us(step, layers, reps)


def time_variant(q, caches, tables, lens, scale, num_splits, min_tokens, merge):
    b, hq, d = q.shape
    hkv = caches[0][0].shape[2]
    ws = torch.empty(attention.decode_workspace_numel(b, hq, d, num_splits), device="cuda")
    counters = torch.zeros(attention.decode_counters_numel(b, hkv), dtype=torch.int32, device="cuda")

    def step():
        for k, v in caches:
            attention.paged_decode_attention_triton(q, k, v, tables, lens, scale, workspace=ws, counters=counters,
                                                    num_splits=num_splits, min_tokens_per_split=min_tokens,
                                                    merge=merge)

    out = attention.paged_decode_attention_triton(q, *caches[0], tables, lens, scale, workspace=ws,
                                                  counters=counters, num_splits=num_splits,
                                                  min_tokens_per_split=min_tokens, merge=merge)
    us = time_graph(step, len(caches))
    assert (counters == 0).all(), "counters not reset"
    return us, out


def time_fused(hq, caches, tables, lens, scale, num_splits, gen):
    """(two-launch µs, fused µs) per layer at the engine's merge mode, from raw qkv rows whose new
    token sits at position ctx_len - 1; checks that both give the same output."""
    b, hkv, d = tables.shape[0], caches[0][0].shape[2], caches[0][0].shape[3]
    qkv = torch.randn(b, (hq + 2 * hkv) * d, generator=gen).to(device="cuda", dtype=torch.bfloat16)
    q, k, v = (t.view(b, -1, d) for t in qkv.split([hq * d, hkv * d, hkv * d], dim=-1))
    q_norm, k_norm = (1 + 0.1 * torch.randn(2, d, generator=gen)).to(device="cuda", dtype=torch.bfloat16)
    cos_sin = rope.build_rope_cache(d, int(lens.max()), 1e6, None, "cuda")
    positions = lens.long() - 1
    slots = tables[torch.arange(b, device="cuda"), positions // BLOCK_SIZE].long() * BLOCK_SIZE + positions % BLOCK_SIZE
    ws = torch.empty(attention.decode_workspace_numel(b, hq, d, num_splits), device="cuda")
    counters = torch.zeros(attention.decode_counters_numel(b, hkv), dtype=torch.int32, device="cuda")
    scratch = dict(workspace=ws, counters=counters, num_splits=num_splits)
    norm_rope = (q_norm, k_norm, cos_sin, positions)

    def two_launches(kc, vc):
        q_normed = rope.qk_norm_rope_store_kv_triton(q, k, v, *norm_rope, kc, vc, slots, 1e-6)
        return attention.paged_decode_attention_triton(q_normed, kc, vc, tables, lens, scale, **scratch)

    def fused(kc, vc):
        return attention.norm_rope_decode_attention_triton(q, k, v, *norm_rope, kc, vc, slots, 1e-6, tables, lens,
                                                           scale, **scratch)

    # Both write the same K/V to the same slots on every call, so they can share the caches.
    # General values may round the q/k-norm variance differently (different reduction layouts).
    torch.testing.assert_close(fused(*caches[0]).float(), two_launches(*caches[0]).float(), atol=2e-2, rtol=2e-2)
    us = [time_graph(lambda f=f: [f(kc, vc) for kc, vc in caches], len(caches)) for f in (two_launches, fused)]
    assert (counters == 0).all(), "counters not reset"
    return us


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="0.6B,8B")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--contexts", default="128,512,2048,8192")
    ap.add_argument("--min-tokens", default="64,128,256,512")
    ap.add_argument("--splits", default="auto,16,32", help="'auto' = decode_num_splits; others fixed")
    ap.add_argument("--fused", action="store_true",
                    help="time qk_norm_rope_store_kv + paged_decode_attention against norm_rope_decode_attention")
    ap.add_argument("--mixed", default=None, metavar="LO:HI",
                    help="each row's context drawn uniformly from [LO, HI] (seed 0), as in the offline benchmark; "
                         "--contexts is then ignored and the engine's block tables hold HI tokens")
    ap.add_argument("--sort-rows", action="store_true",
                    help="with --mixed: rows ordered longest first (the block scheduler then starts the long ones first)")
    ap.add_argument("--out", default="decode_attention_sweep.json")
    args = ap.parse_args()
    copy_rate = measure_copy_rate(torch.device("cuda"))["bytes_per_s"]
    print(f"{torch.cuda.get_device_name()}  copy rate {copy_rate / 1e12:.2f} TB/s")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for shape in args.shapes.split(","):
        s = QWEN3_SHAPES[shape]
        hq, hkv, d = s["num_attention_heads"], s["num_key_value_heads"], 128  # Qwen3 head_dim
        mixed = tuple(map(int, args.mixed.split(":"))) if args.mixed else None
        contexts = [mixed[1]] if mixed else map(int, args.contexts.split(","))
        for batch, context in itertools.product(map(int, args.batch_sizes.split(",")), contexts):
            row_lens = torch.randint(mixed[0], mixed[1] + 1, (batch,), generator=gen, dtype=torch.int32) \
                if mixed else None
            if mixed and args.sort_rows:
                row_lens = row_lens.sort(descending=True).values
            kv_bytes = (int(row_lens.sum()) if mixed else batch * context) * hkv * d * 2 * 2
            layers = max(2, min(36, math.ceil(L2_EVICT_BYTES / kv_bytes)))
            q, caches, tables, lens = make_case(hq, hkv, d, batch, context, layers, gen, row_lens)
            scale = d ** -0.5
            # The engine sizes splits from a block table that holds max_model_len: here 8192 + 256
            # (with --mixed: HI, as the offline benchmark's limit is its longest request).
            capacity = context if mixed else 8448
            auto = attention.decode_num_splits(batch, hkv, math.ceil(capacity / BLOCK_SIZE), BLOCK_SIZE)
            split_options = sorted({auto if x == "auto" else int(x) for x in args.splits.split(",")})
            floor_us = kv_bytes / copy_rate * 1e6
            if args.fused:
                two_us, fused_us = time_fused(hq, caches, tables, lens, scale, auto, gen)
                rows.append({"shape": shape, "batch": batch, "context": context, "num_splits": auto,
                             "merge": attention.decode_merge_mode(auto), "two_launch_us": two_us,
                             "fused_us": fused_us, "floor_us": floor_us, "layers": layers})
                print(f"{shape:>5} B={batch:<3} ctx={args.mixed or context:<5} floor {floor_us:6.2f} µs | rope + attention "
                      f"{two_us:6.2f} | fused {fused_us:6.2f} ({two_us - fused_us:+.2f} saved, splits {auto}, "
                      f"{attention.decode_merge_mode(auto)})")
                del caches
                torch.cuda.empty_cache()
                continue
            ref = attention.paged_decode_attention_reference(q, *caches[0], tables, lens, scale)
            results = []
            for num_splits, min_tokens, merge in itertools.product(
                    split_options, map(int, args.min_tokens.split(",")), ("kernel", "launch")):
                us, out = time_variant(q, caches, tables, lens, scale, num_splits, min_tokens, merge)
                torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
                results.append({"shape": shape, "batch": batch, "context": context, "num_splits": num_splits,
                                "auto_splits": auto, "min_tokens": min_tokens, "merge": merge, "us": us,
                                "floor_us": floor_us, "layers": layers})
            rows += results
            best = min(results, key=lambda r: r["us"])
            cur = next(r for r in results if r["num_splits"] == auto and r["merge"] == attention.decode_merge_mode(auto)
                       and r["min_tokens"] == attention.DECODE_MIN_TOKENS_PER_SPLIT)
            print(f"{shape:>5} B={batch:<3} ctx={args.mixed or context:<5} floor {floor_us:6.2f} µs | current {cur['us']:6.2f} | "
                  f"best {best['us']:6.2f} (splits {best['num_splits']}, min {best['min_tokens']}, {best['merge']})")
            for merge in ("kernel", "launch"):
                line = "  ".join(f"s{r['num_splits']}/m{r['min_tokens']}:{r['us']:.1f}" for r in results
                                 if r["merge"] == merge)
                print(f"      {merge:6} {line}")
            del caches
            torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": __import__("triton").__version__,
                   "copy_rate": copy_rate, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
