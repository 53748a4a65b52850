"""Programmatic Dependent Launch on and off: decode-graph GPU time and greedy tokens (GPU only).

For each --shapes entry (dummy weights, as benchmarks/step_breakdown.py builds them) a worker
subprocess runs once with PDL (the default on sm_90+) and once with EMBER_DISABLE_PDL=1, so each
compiles and captures its own kernels. A worker, per --batch-sizes entry:
  - greedy tokens of 32 decode steps after a --prompt-len token prompt per sequence;
  - GPU time of the bucket's decode graph (CUDA events around 100 back-to-back replays, median of
    5 such runs), with the graph's inputs left from steady decode after the same prompts;
  - a hash of the graph's logits after those replays (bitwise equality across PDL on/off).
Prints a table PDL vs no-PDL and asserts that the greedy tokens are identical.

    python benchmarks/pdl_check.py [--shapes 0.6B,8B] [--batch-sizes 1,32] [--out pdl_check.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOKENIZER = Path(__file__).parents[1] / "tests" / "data" / "qwen3-tokenizer"
DECODE_STEPS = 32


def folder(shape: str, root: Path) -> str:
    """A config + tokenizer folder of Qwen3 shape ``shape``, for --load-format dummy."""
    from ember.tools.random_checkpoint import QWEN3_SHAPES, qwen3_config, write_config_folder

    return str(write_config_folder(root / f"qwen3-{shape}", qwen3_config(**QWEN3_SHAPES[shape]), TOKENIZER))


def prompts(batch_size: int, prompt_len: int) -> list[list[int]]:
    return [[1000 + (7 * i + 13 * j) % 50_000 for j in range(prompt_len)] for i in range(batch_size)]


def worker(shape: str, root: Path, batch_sizes: list[int], prompt_len: int) -> dict:
    import torch

    from ember import LLM, SamplingParams
    from ember.engine.cuda_graphs import pick_bucket
    from ember.ops.dispatch import pdl_enabled

    t0 = time.perf_counter()
    llm = LLM(folder(shape, root), load_format="dummy", device="cuda", seed=0, max_model_len=prompt_len + 256,
              max_num_seqs=max(batch_sizes), progress=False, enable_prefix_caching=False)
    engine = llm.engine
    out = {"shape": shape, "pdl": pdl_enabled(torch.device("cuda")), "gpu": torch.cuda.get_device_name(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "init_s": time.perf_counter() - t0, "batches": {}}
    for b in batch_sizes:
        greedy = SamplingParams(temperature=0.0, max_tokens=DECODE_STEPS + 1, ignore_eos=True)  # 1 from prefill
        tokens = [o.token_ids for o in llm.generate(prompts(b, prompt_len), greedy, use_tqdm=False)]
        # Steady decode, so the graph's static inputs hold a real step; then time its replays alone.
        params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
        seqs = [engine.add_request(p, params) for p in prompts(b, prompt_len)]
        while not all(s.num_output_tokens >= 1 for s in seqs):
            engine.step()
        for _ in range(8):
            engine.step()
        torch.cuda.synchronize()
        bucket = pick_bucket(engine.runner.cuda_graphs.buckets, b)
        graph = engine.runner.cuda_graphs.graph_for(bucket, max(map(len, seqs)))
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        torch.cuda.synchronize()
        runs = []
        for _ in range(5):
            start.record()
            for _ in range(100):
                graph.replay()
            end.record()
            end.synchronize()
            runs.append(start.elapsed_time(end) / 100)
        logits = engine.runner.cuda_graphs.logits[:b].float().cpu().numpy().tobytes()
        for s in seqs:
            engine.abort(s)
        while engine.has_unfinished():
            engine.step()
        out["batches"][str(b)] = {"bucket": bucket, "graph_ms": sorted(runs)[len(runs) // 2], "graph_ms_runs": runs,
                                  "tokens": tokens, "logits_sha1": hashlib.sha1(logits).hexdigest()}
    out["total_s"] = time.perf_counter() - t0
    return out


def run_worker(shape: str, root: str, args, pdl: bool) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("EMBER_DISABLE_PDL", None)
    if not pdl:
        env["EMBER_DISABLE_PDL"] = "1"
    cmd = [sys.executable, __file__, "--worker", "--shapes", shape, "--root", root,
           "--batch-sizes", args.batch_sizes, "--prompt-len", str(args.prompt_len)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.worker_timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"worker {shape} pdl={pdl} failed with rc {proc.returncode}")
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="0.6B,8B")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    p.add_argument("--worker-timeout", type=int, default=300)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    if a.worker:
        print("RESULT " + json.dumps(worker(a.shapes, Path(a.root), batch_sizes, a.prompt_len)), flush=True)
        return

    t0 = time.perf_counter()
    results, failures = [], []
    with tempfile.TemporaryDirectory() as root:
        for shape in a.shapes.split(","):
            on, off = run_worker(shape, root, a, pdl=True), run_worker(shape, root, a, pdl=False)
            results.append({"shape": shape, "pdl": on, "no_pdl": off})
            if not on["pdl"]:
                print(f"warning: PDL was not enabled in the PDL worker ({on['gpu']}, CUDA {on['cuda']})")
            print(f"{shape}: {on['gpu']}, torch {on['torch']}, CUDA {on['cuda']}; worker time PDL "
                  f"{on['total_s']:.0f} s, no-PDL {off['total_s']:.0f} s")
            print(f"  {'batch':>5} {'bucket':>6} {'no-PDL ms':>10} {'PDL ms':>8} {'saved':>8} {'speedup':>8}"
                  f"  greedy  logits")
            for b in batch_sizes:
                r_on, r_off = on["batches"][str(b)], off["batches"][str(b)]
                same_tokens = r_on["tokens"] == r_off["tokens"]
                same_logits = r_on["logits_sha1"] == r_off["logits_sha1"]
                if not same_tokens:
                    failures.append(f"{shape} batch {b}: greedy tokens differ with PDL")
                ms_on, ms_off = r_on["graph_ms"], r_off["graph_ms"]
                print(f"  {b:5d} {r_on['bucket']:6d} {ms_off:10.3f} {ms_on:8.3f} {ms_off - ms_on:8.3f} "
                      f"{ms_off / ms_on:7.2f}x  {'same' if same_tokens else 'DIFF':6s}  "
                      f"{'bitwise' if same_logits else 'differ'}", flush=True)
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))
    print(f"total {time.perf_counter() - t0:.0f} s")
    assert not failures, failures
    print("greedy tokens identical with and without PDL")


if __name__ == "__main__":
    main()
