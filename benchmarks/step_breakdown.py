"""Where one decode step's time goes: graph GPU time, host phases, kernels, and GEMV rates.

For each --shapes entry (dummy weights) and each --batch-sizes entry, in one process:
  - wall time per ``engine.step()`` in steady decode (what a user sees);
  - GPU time of the decode graph alone (CUDA events around back-to-back replays);
  - the same step run phase by phase with a sync after each (schedule, prepare, replay,
    sample, post-process), so the host phases that do not overlap the GPU show up;
  - the graph's kernels from the profiler, per step, sorted;
and once per shape the projection GEMMs at M = 1..32 (cuBLAS, under a graph) as a share of the
copy rate, so a Triton GEMV can be judged against them. Prints a summary; writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ember import LLM, SamplingParams
from ember.bench.ceilings import copy_rate as measure_copy_rate
from ember.tools.random_checkpoint import QWEN3_SHAPES, qwen3_config, write_config_folder

TOKENIZER = Path(__file__).parents[1] / "tests" / "data" / "qwen3-tokenizer"


def folder(shape: str, root: Path) -> str:
    """A config + tokenizer folder of Qwen3 shape ``shape``, for --load-format dummy."""
    return str(write_config_folder(root / f"qwen3-{shape}", qwen3_config(**QWEN3_SHAPES[shape]), TOKENIZER))


def event_ms(fn, reps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def phased_step(engine) -> dict:
    """One decode step with a sync after each phase: host-side cost of each (ms)."""
    from ember.engine.cuda_graphs import pick_bucket

    if engine._inflight is not None:  # async scheduling: read the launched step first
        engine._process(engine._inflight)
        engine._inflight = None
    sync = torch.cuda.synchronize
    sync()
    t0 = time.perf_counter()
    batch = engine.scheduler.schedule()
    t1 = time.perf_counter()
    runner = engine.runner
    seqs = batch.seqs
    bucket = pick_bucket(runner.cuda_graphs.buckets, len(seqs))
    runner.inputs.prepare_decode(seqs, num_rows=bucket)
    sync()
    t2 = time.perf_counter()
    runner.cuda_graphs.graph_for(bucket, max(map(len, seqs))).replay()
    t3 = time.perf_counter()
    sync()
    t4 = time.perf_counter()
    sampled = runner.sampler.sample(seqs, runner.cuda_graphs.logits[: len(seqs)],
                                    argmax_done=bucket in runner.cuda_graphs.argmax_buckets)
    sampled.wait()
    t5 = time.perf_counter()
    engine.scheduler.mark_computed(batch)
    for seq in batch.sampling_seqs:
        seq.append_pending()
    engine._process(sampled)
    t6 = time.perf_counter()
    t = dict(schedule=t1 - t0, prepare=t2 - t1, replay_launch=t3 - t2, replay_wait=t4 - t3, sample=t5 - t4,
             postprocess=t6 - t5)
    return {k: 1000 * v for k, v in t.items()}


def kernels_of_replay(graph, reps: int = 5) -> list[dict]:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    rows = [(e.key, e.count / reps, e.self_device_time_total / reps) for e in prof.key_averages()
            if e.self_device_time_total > 0]
    rows.sort(key=lambda r: -r[2])
    return [{"kernel": k[:90], "calls_per_step": c, "us_per_step": us} for k, c, us in rows[:25]]


def measure_shape(shape: str, root: Path, batch_sizes: list[int], copy_rate: float, prompt_len: int = 128,
                  gemms: bool = True) -> dict:
    llm = LLM(folder(shape, root), load_format="dummy", device="cuda", max_model_len=prompt_len + 1024,
              max_num_seqs=max(batch_sizes), progress=False, enable_prefix_caching=False)
    engine = llm.engine
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    emb = engine.model.model.embed_tokens
    read_bytes = weight_bytes - emb.numel() * emb.element_size() * (0 if engine.config.tie_word_embeddings else 1)
    out = {"shape": shape, "weight_bytes": weight_bytes, "decode_read_bytes": read_bytes,
           "floor_ms": 1000 * read_bytes / copy_rate, "batches": {}}
    for b in batch_sizes:
        params = SamplingParams(temperature=0.0, max_tokens=600, ignore_eos=True)
        seqs = [engine.add_request([1000 + 7 * i + j for j in range(prompt_len)], params) for i in range(b)]
        while not all(s.num_output_tokens >= 1 for s in seqs):
            engine.step()
        for _ in range(10):
            engine.step()
        torch.cuda.synchronize()
        n = 100
        t = time.perf_counter()
        for _ in range(n):
            engine.step()
        torch.cuda.synchronize()
        wall_ms = 1000 * (time.perf_counter() - t) / n
        engine.args.async_scheduling = False  # the same steps, each waiting for its own tokens
        engine.step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            engine.step()
        torch.cuda.synchronize()
        wall_sync_ms = 1000 * (time.perf_counter() - t) / n
        engine.args.async_scheduling = True
        phases = [phased_step(engine) for _ in range(30)]
        phases_med = {k: sorted(p[k] for p in phases)[len(phases) // 2] for k in phases[0]}
        from ember.engine.cuda_graphs import pick_bucket

        bucket = pick_bucket(engine.runner.cuda_graphs.buckets, b)
        graph = engine.runner.cuda_graphs.graph_for(bucket, max(map(len, seqs)))
        gpu_ms = event_ms(graph.replay, 100)
        kernels = kernels_of_replay(graph)
        for s in seqs:
            engine.abort(s)
        r = {"wall_ms_per_step": wall_ms, "wall_ms_per_step_sync": wall_sync_ms, "graph_gpu_ms": gpu_ms, "phases_ms": phases_med, "kernels": kernels}
        out["batches"][b] = r
        print(f"{shape} b={b}: wall {wall_ms:.3f} ms/step (sync {wall_sync_ms:.3f}), graph GPU {gpu_ms:.3f} ms, floor(weights) "
              f"{out['floor_ms']:.3f} ms; phases " + ", ".join(f"{k} {v:.3f}" for k, v in phases_med.items()),
              flush=True)
        for k in kernels[:12]:
            print(f"    {k['us_per_step']:8.1f} us  x{k['calls_per_step']:5.0f}  {k['kernel']}")
    # cuBLAS projection GEMMs at small M, under a graph, as a share of the copy rate.
    cfg = engine.config
    if not gemms:
        del llm, engine
        torch.cuda.empty_cache()
        return out
    h, i, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads * cfg.head_dim, \
        cfg.num_key_value_heads * cfg.head_dim
    gemms = {"qkv": (q + 2 * kv, h), "o": (h, q), "gate_up": (2 * i, h), "down": (h, i), "lm_head": (cfg.vocab_size, h)}
    out["gemm"] = {}
    for name, (n_out, k_in) in gemms.items():
        ws = [torch.randn(n_out, k_in, device="cuda", dtype=torch.bfloat16) for _ in range(4)]  # rotate: beat L2
        for m in (1, 8, 32):
            x = torch.randn(m, k_in, device="cuda", dtype=torch.bfloat16)
            g = torch.cuda.CUDAGraph()
            torch.nn.functional.linear(x, ws[0])
            torch.cuda.synchronize()
            with torch.cuda.graph(g):
                for w in ws * 5:
                    torch.nn.functional.linear(x, w)
            ms = event_ms(g.replay, 20) / 20
            share = (n_out * k_in * 2 / (ms / 1000)) / copy_rate
            out["gemm"][f"{name} M={m}"] = {"us": 1000 * ms, "share_of_copy_rate": share}
            print(f"  gemm {name:8s} {n_out}x{k_in} M={m:2d}: {1000 * ms:7.1f} us, {share:.0%} of copy rate")
        del ws
    del llm, engine
    torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="0.6B,8B")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--no-gemms", action="store_true", help="skip the cuBLAS projection timings")
    p.add_argument("--out", type=Path, default=Path("step_breakdown.json"))
    a = p.parse_args()
    copy_rate = measure_copy_rate(torch.device("cuda"))["bytes_per_s"]
    print(f"copy rate {copy_rate / 1e12:.2f} TB/s")
    results = {"copy_rate": copy_rate, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": []}
    with tempfile.TemporaryDirectory() as root:
        for s in a.shapes.split(","):
            batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
            results["shapes"].append(measure_shape(s, Path(root), batch_sizes, copy_rate, a.prompt_len, not a.no_gemms))
    a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
