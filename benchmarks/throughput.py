"""Offline throughput on nano-vllm's published workload, optionally against HF transformers.

The workload (nano-vllm's bench.py): 256 requests whose prompt and output lengths are each drawn
uniformly from [100, 1024], random prompt token ids, ``ignore_eos`` so every request generates
exactly its drawn length, all submitted at once. Ember runs them through ``LLM.generate``, i.e.
the continuous-batching scheduler, so this measures the scheduler and the kernels together.

    python benchmarks/throughput.py -m ./Qwen3-0.6B --load-format dummy --compare hf
    python benchmarks/throughput.py -m ./tiny --small --out /tmp/tp        # CI size

Writes throughput.json and throughput.md to --out.
"""

from __future__ import annotations

import argparse
import gc
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from ember import LLM, SamplingParams
from ember.bench import report
from ember.bench.ember_runner import kv_cache_info
from ember.bench.environment import default_out_dir, environment, today
from ember.bench.jit_watch import TritonBuildWatch
from ember.bench.run import shared_random_weights, weights_source
from ember.bench.stats import now, peak_memory_bytes, reset_peak_memory
from ember.config import ModelConfig, parse_dtype
from ember.engine.llm_engine import pick_device
from ember.loader.model_path import resolve_model_path

SCHEMA_VERSION = 1
TOKEN_ID_BOUND = 10_000  # nano-vllm draws prompt ids below 10k: all real tokens in Qwen3's vocabulary
NANO_VLLM_TEMPERATURE = 0.6  # what nano-vllm's bench.py samples with
SMALL = dict(num_requests=8, min_len=4, max_len=16)  # --small: what CI runs


def log(message: str) -> None:
    print(f"throughput: {message}", file=sys.stderr, flush=True)


def workload(num_requests: int, min_len: int, max_len: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """(prompts as token ids, output lengths), drawn in nano-vllm's order: every prompt first,
    then every output length, from one seeded generator."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(num_requests):
        ids = [rng.randrange(TOKEN_ID_BOUND) for _ in range(rng.randint(min_len, max_len))]
        if not any(ids):  # an all-zero prompt is degenerate (a padding-like input); never give one
            ids[0] = 1
        prompts.append(ids)
    out_lens = [rng.randint(min_len, max_len) for _ in range(num_requests)]
    return prompts, out_lens


def figures(elapsed_s: float, prompt_tokens: int, output_tokens: int) -> dict:
    return {"elapsed_s": elapsed_s, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
            "output_tok_s": output_tokens / elapsed_s, "total_tok_s": (prompt_tokens + output_tokens) / elapsed_s}


# ----- Ember ------------------------------------------------------------------------------------

def run_ember(path: str, args, load_format: str, device: torch.device, prompts, out_lens) -> dict:
    max_len = max(len(p) for p in prompts) + max(out_lens)
    llm = LLM(path, dtype=args.dtype, device=str(device), load_format=load_format, max_model_len=max_len,
              max_num_seqs=args.max_num_seqs, seed=args.seed, progress=False)
    # The engine warmed up at start-up (on CUDA); also run the workload's own kind of request
    # (its temperature, a mixed prefill + decode step) before the clock starts.
    warm = SamplingParams(temperature=args.temperature, max_tokens=4, ignore_eos=True, seed=args.seed)
    llm.generate([prompts[0][:8], prompts[1][:40], prompts[2][:3]], warm, use_tqdm=False)
    params = [SamplingParams(temperature=args.temperature, max_tokens=n, ignore_eos=True, seed=args.seed + i)
              for i, n in enumerate(out_lens)]
    engine = llm.engine
    preemptions = engine.scheduler.num_preemptions
    reset_peak_memory(device)
    steps = record_steps(engine)
    allocator = allocator_counts(device)
    # A kernel built, or a Python collection, in the timed run would read as slow steps.
    with TritonBuildWatch() as builds, CollectionWatch() as collections:
        start = now(device)
        outs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = now(device) - start
    del engine.step  # back to the class's method
    allocator = {k: v - allocator[k] for k, v in allocator_counts(device).items()}
    generated = [len(o.outputs[0].token_ids) for o in outs]
    if generated != out_lens:  # ignore_eos: anything else means the run did not do the workload
        raise RuntimeError(f"Ember generated {sum(generated)} tokens, expected {sum(out_lens)}")
    result = {
        **figures(elapsed, sum(map(len, prompts)), sum(generated)),
        "steps": summarize_steps(steps),
        "preemptions": engine.scheduler.num_preemptions - preemptions,
        "peak_memory_bytes": peak_memory_bytes(device),
        "engine": kv_cache_info(llm),
        "triton_builds": builds.builds,
        "triton_builds_summary": builds.summary(),
        **slow_step_diagnostics(steps, collections.events),
        "cuda_allocator": allocator or None,
    }
    del llm, engine
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the HF run gets the memory back
    return result


def record_steps(engine) -> list[tuple[int, int, float, float]]:
    """Per engine step from now on: (decode rows, prompt tokens, wall seconds, start on the
    perf_counter clock) of the batch it scheduled. With async scheduling a step's wall time is
    its launch plus the wait for the step before, so it stands for the GPU time of the batch
    launched one step earlier."""
    log, step = [], engine.step

    def timed_step():
        t = time.perf_counter()
        outputs = step()
        batch = getattr(engine, "_last_batch", None)
        rows = batch.num_new_tokens if batch is not None else []
        log.append((sum(n == 1 for n in rows), sum(n for n in rows if n > 1), time.perf_counter() - t, t))
        return outputs

    engine.step = timed_step
    return log


def summarize_steps(log: list[tuple[int, int, float]]) -> dict:
    """Where the wall time went: steps with prompt tokens, and pure decode steps by batch size."""
    groups: dict[str, list[float]] = {}
    for decode_rows, prompt_tokens, seconds, *_ in log:
        if prompt_tokens:
            key = "with_prompt_tokens"
        else:
            key = next(f"decode_{lo}-{hi}" for lo, hi in ((0, 16), (17, 64), (65, 128), (129, 192), (193, 1 << 30))
                       if lo <= decode_rows <= hi)
        groups.setdefault(key, []).append(seconds)
    return {k: {"steps": len(v), "seconds": sum(v), "ms_per_step": 1000 * sum(v) / len(v), "max_ms": 1000 * max(v)}
            for k, v in sorted(groups.items())}


class CollectionWatch:
    """Every Python garbage collection while active: generation, start (perf_counter) and ms."""

    def __enter__(self):
        self.events: list[dict] = []
        self._start = 0.0
        gc.callbacks.append(self._callback)
        return self

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.events.append({"generation": info["generation"], "start": self._start,
                                "ms": 1000 * (time.perf_counter() - self._start)})

    def __exit__(self, *exc):
        gc.callbacks.remove(self._callback)


def allocator_counts(device: torch.device) -> dict:
    """Counters of the CUDA caching allocator that a slow step could come from (cudaMalloc of a
    new segment, a retry after freeing the cache); nothing off CUDA."""
    if device.type != "cuda":
        return {}
    stats = torch.cuda.memory_stats(device)
    return {"alloc_retries": stats.get("num_alloc_retries", 0),
            "segments_allocated": stats.get("segment.all.allocated", 0),
            "device_allocs": stats.get("num_device_alloc", 0)}


def slow_step_diagnostics(log: list[tuple[int, int, float, float]], collections: list[dict], top: int = 5) -> dict:
    """The slowest steps, each with the collection time inside it, and the collections by
    generation with the longest ones placed in their step: what an outlier step was doing."""
    def step_of(t: float) -> int | None:
        return next((i for i, (*_, seconds, start) in enumerate(log) if start <= t <= start + seconds), None)

    gc_ms = [0.0] * len(log)
    for c in collections:
        i = step_of(c["start"])
        c["step"] = i
        if i is not None:
            gc_ms[i] += c["ms"]
    slowest = sorted(range(len(log)), key=lambda i: -log[i][2])[:top]
    by_generation = {str(g): [c["ms"] for c in collections if c["generation"] == g] for g in (0, 1, 2)}
    return {
        "slowest_steps": [{"step": i, "ms": 1000 * log[i][2], "decode_rows": log[i][0], "prompt_tokens": log[i][1],
                           "gc_ms": gc_ms[i]} for i in slowest],
        "gc": {"collections": {g: len(v) for g, v in by_generation.items()},
               "ms": {g: sum(v) for g, v in by_generation.items()},
               "longest": [{k: c[k] for k in ("generation", "ms", "step")}
                           for c in sorted(collections, key=lambda c: -c["ms"])[:top]]},
    }


# ----- HF transformers ----------------------------------------------------------------------------

def run_hf(path: Path, dtype: torch.dtype, device: torch.device, prompts, out_lens, batch_size: int,
           temperature: float) -> dict:
    """HF ``generate`` in fixed batches of the requests in order, left-padded. One generate call
    has one length, so each batch runs to its longest drawn output (min_new_tokens = max_new_tokens):
    that padding work is HF's real cost on this workload, but only the drawn tokens count as output."""
    from ember.bench.hf_runner import load_hf_model

    model = load_hf_model(path, dtype, device)
    pad = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
    sampling = (dict(do_sample=True, temperature=temperature) if temperature > 0
                else dict(do_sample=False, temperature=None))

    def one_batch(ps: list[list[int]], n: int) -> int:
        width = max(map(len, ps))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in ps], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps], device=device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, min_new_tokens=n, max_new_tokens=n,
                                 top_p=None, top_k=None, pad_token_id=pad, **sampling)
        return (out.shape[1] - width) * len(ps)

    one_batch([prompts[0][:8]], 4)  # warm-up
    reset_peak_memory(device)
    start, computed = now(device), 0
    for i in range(0, len(prompts), batch_size):
        computed += one_batch(prompts[i:i + batch_size], max(out_lens[i:i + batch_size]))
    elapsed = now(device) - start
    model = None  # drop the weights before gc (one_batch, which refers to it, is done)
    gc.collect()
    return {
        **figures(elapsed, sum(map(len, prompts)), sum(out_lens)),
        "generated_tokens_incl_batch_padding": computed,
        "peak_memory_bytes": peak_memory_bytes(device),
        "how": (f"transformers Qwen3ForCausalLM.generate, eager, dynamic cache; batches of {batch_size} requests "
                "in order, left-padded with attention mask; each batch runs min_new_tokens = max_new_tokens = its "
                "longest drawn output; output tok/s counts only the drawn lengths; "
                + (f"sampling at temperature {temperature}" if temperature > 0 else "greedy")),
    }


# ----- report -----------------------------------------------------------------------------------

def markdown(r: dict) -> str:
    env, w = r["environment"], r["workload"]
    rows = [[name, report.number(f["elapsed_s"], 2), report.number(f["output_tok_s"]), report.number(f["total_tok_s"]),
             report.number(f["peak_memory_bytes"] / report.GiB, 2)]
            for name, f in (("Ember", r["ember"]), ("HF transformers", r["hf"])) if f]
    parts = [
        f"# Offline throughput: {r['model']['name']} on {env['gpu_name']}",
        f"{r['date']} · `{r['command']}`",
        f"- **Software:** torch {env['torch']}, triton {env['triton']}, transformers {env['transformers'] or '–'}, "
        f"ember {env['ember']}; driver {env['driver'] or '–'}, CUDA {env['cuda'] or '–'}",
        f"- **Workload:** {w['num_requests']} requests, prompt and output lengths uniform in [{w['min_len']}, "
        f"{w['max_len']}] (seed {w['seed']}): {w['prompt_tokens']:,} prompt + {w['output_tokens']:,} output tokens, "
        f"ignore_eos, temperature {w['temperature']}, all submitted at once",
        f"- **Model:** {r['model']['dtype']}, weights {r['model']['weights']}; Ember preemptions: "
        f"{r['ember']['preemptions']}",
        "",
        report.md_table(["engine", "elapsed s", "output tok/s", "total tok/s", "peak mem GiB"], rows),
        "",
        "Ember's steps (wall time; with async scheduling a step's time is mostly the GPU time of the batch "
        "launched one step earlier): " + "; ".join(f"{k}: {v['steps']} steps, {v['seconds']:.2f} s "
                                                   f"({v['ms_per_step']:.2f} ms each, longest {v['max_ms']:.2f})"
                                                   for k, v in r["ember"].get("steps", {}).items()),
        "",
        f"Triton kernels built during Ember's timed run: {r['ember'].get('triton_builds_summary', '–')}.",
    ]
    if "slowest_steps" in r["ember"]:
        e = r["ember"]
        parts += ["", "Slowest steps: " + "; ".join(
            f"#{s['step']} {s['ms']:.2f} ms ({s['decode_rows']} decode rows, {s['prompt_tokens']} prompt tokens, "
            f"{s['gc_ms']:.2f} ms in Python collections)" for s in e["slowest_steps"]) + ". Python collections "
            "in the timed run by generation: " + ", ".join(
                f"{g}: {n} ({e['gc']['ms'][g]:.1f} ms)" for g, n in e["gc"]["collections"].items())
            + (f". CUDA allocator during the run: {e['cuda_allocator']}." if e.get("cuda_allocator") else ".")]
    if r["hf"]:
        subset = (f" HF ran the first {r['hf']['num_requests']} of the {w['num_requests']} requests; its tok/s is "
                  "over those." if r["hf"].get("num_requests", w["num_requests"]) < w["num_requests"] else "")
        parts += ["", f"Ember ÷ HF output tok/s: {report.times(r['ember_over_hf'])}. HF: {r['hf']['how']}.{subset}"]
    return "\n".join(parts) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", required=True, help="local Hugging Face folder or hub id")
    p.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    p.add_argument("--num-requests", type=int, default=256)
    p.add_argument("--min-len", type=int, default=100, help="shortest prompt and output (inclusive)")
    p.add_argument("--max-len", type=int, default=1024, help="longest prompt and output (inclusive)")
    p.add_argument("--seed", type=int, default=0, help="seed of the workload, the sampling and dummy weights")
    p.add_argument("--temperature", type=float, default=NANO_VLLM_TEMPERATURE, help="0 = greedy (default: %(default)s, nano-vllm's)")
    p.add_argument("--max-num-seqs", type=int, default=256, help="Ember's running-batch limit")
    p.add_argument("--compare", choices=["hf"], help="also run HF transformers on the same weights")
    p.add_argument("--hf-batch-size", type=int, default=32)
    p.add_argument("--hf-num-requests", type=int, default=None,
                   help="HF runs only the first N requests of the workload (it is ~100x slower); "
                        "its tok/s is then over those (default: all)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<date>-<gpu>-<model>-throughput/)")
    p.add_argument("--small", action="store_true", help="CI size: 8 requests, lengths in [4, 16]")
    return p


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.small:
        for key, value in SMALL.items():
            setattr(args, key, value)
    if not 1 <= args.min_len <= args.max_len or args.num_requests < 1:
        raise SystemExit("throughput: need 1 <= --min-len <= --max-len and --num-requests >= 1")
    device = pick_device(args.device)
    model_path = resolve_model_path(args.model)
    dtype = parse_dtype(args.dtype, default=ModelConfig.from_folder(model_path).torch_dtype)
    env = environment(device)
    prompts, out_lens = workload(args.num_requests, args.min_len, args.max_len, args.seed)

    with tempfile.TemporaryDirectory(prefix="ember-throughput-") as scratch:
        load_path, load_format = model_path, args.load_format
        if args.compare == "hf" and load_format == "dummy":
            log("writing one random checkpoint that Ember and HF both load")
            load_path, load_format = shared_random_weights(model_path, dtype, device, args.seed, Path(scratch)), "auto"
        log(f"Ember: {len(prompts)} requests, {sum(out_lens):,} output tokens")
        ember = run_ember(str(load_path), args, load_format, device, prompts, out_lens)
        log(f"Ember: {ember['output_tok_s']:,.0f} output tok/s, {ember['elapsed_s']:.2f} s")
        hf = None
        if args.compare == "hf":
            k = min(args.hf_num_requests or len(prompts), len(prompts))
            log(f"HF transformers: the first {k} requests, batches of {args.hf_batch_size}")
            hf = run_hf(load_path, dtype, device, prompts[:k], out_lens[:k], args.hf_batch_size, args.temperature)
            hf["num_requests"] = k
            log(f"HF: {hf['output_tok_s']:,.0f} output tok/s, {hf['elapsed_s']:.2f} s")

    result = {
        "schema_version": SCHEMA_VERSION,
        "date": today(),
        "command": shlex.join(["python", "benchmarks/throughput.py", *argv]),
        "environment": env,
        "model": {"name": args.model, "path": str(model_path), "load_format": args.load_format,
                  "weights": weights_source(args.load_format, load_format), "dtype": str(dtype).removeprefix("torch.")},
        "workload": {"source": "nano-vllm bench.py", "num_requests": args.num_requests, "min_len": args.min_len,
                     "max_len": args.max_len, "seed": args.seed, "temperature": args.temperature,
                     "ignore_eos": True, "token_id_bound": TOKEN_ID_BOUND,
                     "prompt_tokens": sum(map(len, prompts)), "output_tokens": sum(out_lens)},
        "ember": ember,
        "hf": hf,
        "ember_over_hf": ember["output_tok_s"] / hf["output_tok_s"] if hf else None,
    }
    out = args.out or default_out_dir(env["gpu_name"], args.model, "-throughput")
    md = markdown(result)
    paths = report.write_json_md(out, "throughput", result, md)
    print(md)
    log("wrote " + ", ".join(map(str, paths)))
    return result


if __name__ == "__main__":
    main()
