"""The batch-1 projections' tile configs measured where they run: inside the engine's decode graph.

``gemv_sweep.py`` times each projection after itself, so a config that starts slowly behind the
previous kernel, or leaves a long tail before the next one, looks better than it is in the
engine. Here one decode graph of the real model (dummy weights, a 128-token context) is
recaptured for each candidate config of one projection, the others at the table's, and timed as
back-to-back replays (CUDA events). The table's config is measured first and last, so drift
between the two shows in the output. Results: one JSON with every candidate's ms per replay.

Two more sweeps use the same harness: ``--attention-contexts`` times the decode attention's split
variants (split count, merge mode, loads before the PDL wait) at each listed context length, and
``--lm-head`` times the LM head through the skinny GEMM against cuBLAS.

    python benchmarks/gemv_engine_sweep.py --shapes 8B,0.6B --out sweep.json
    python benchmarks/gemv_engine_sweep.py --projections none --attention-contexts 128,512 --lm-head
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ember import LLM, SamplingParams
from ember.bench.stats import replay_us
from ember.engine import cuda_graphs
from ember.ops import decode_attention, skinny_gemm
from ember.ops.skinny_gemm import SkinnyConfig, _launch, skinny_config
from ember.tools.random_checkpoint import QWEN3_SHAPES, qwen3_config, write_config_folder

TOKENIZER = Path(__file__).parents[1] / "tests" / "data" / "qwen3-tokenizer"
C = SkinnyConfig
# (table key the projection's launch looks up first at M = 1, candidates besides the table's)
CANDIDATES = {
    "8B": {
        "qkv": (("rms_norm_linear", 6144, 4096, 1),
                [C(32, 256, 1, 4, 4, True), C(64, 256, 2, 4, 3, True), C(16, 512, 1, 4, 4, True),
                 C(32, 512, 1, 4, 3, True), C(64, 128, 1, 4, 4, True)]),
        "o": (("linear_add", 4096, 4096, 1),
              [C(32, 256, 1, 4, 4, True), C(16, 256, 1, 4, 4, True), C(16, 512, 1, 4, 3, True),
               C(32, 256, 2, 4, 4, True), C(64, 128, 4, 4, 4, True)]),
        "gate_up": (("rms_norm_gate_silu", 24576, 4096, 1),
                    [C(128, 128, 1, 4, 4, True), C(64, 256, 1, 4, 3, True), C(32, 256, 1, 4, 4, True)]),
        "down": (("linear_add", 4096, 12288, 1),
                 [C(16, 512, 1, 4, 4, True), C(16, 256, 1, 4, 4, True), C(32, 256, 2, 4, 4, True),
                  C(32, 512, 1, 4, 3, True), C(64, 256, 3, 4, 3, True)]),
    },
    "0.6B": {
        "qkv": (("rms_norm_linear", 4096, 1024, 1),
                [C(16, 256, 1, 4, 4, True), C(8, 512, 1, 4, 4, False), C(32, 128, 1, 4, 4, True),
                 C(64, 256, 1, 4, 3, True)]),
        "o": (("linear_add", 1024, 2048, 1),
              [C(8, 512, 1, 4, 4, False), C(16, 256, 1, 4, 4, True), C(16, 256, 2, 4, 4, True),
               C(4, 512, 1, 4, 4, False)]),
        "gate_up": (("rms_norm_gate_silu", 6144, 1024, 1),
                    [C(64, 128, 1, 4, 4, True), C(32, 256, 1, 4, 4, True), C(16, 512, 1, 4, 4, False),
                     C(64, 256, 1, 4, 3, True)]),
        "down": (("linear_add", 1024, 3072, 1),
                 [C(8, 512, 1, 4, 4, False), C(16, 256, 1, 4, 4, True), C(16, 256, 2, 4, 4, True),
                  C(4, 512, 1, 4, 4, False)]),
    },
}


# Decode attention at batch 1: (name, splits or None for the engine's, merge mode, loads before the wait)
ATTENTION_VARIANTS = [("engine", None, None, None), ("1 split", 1, "kernel", True), ("1 split, wait first", 1, "kernel", False),
                      ("2 splits, in-kernel merge", 2, "kernel", True), ("4 splits, in-kernel merge", 4, "kernel", True),
                      ("4 splits, merge launch", 4, "launch", True), ("8 splits, merge launch", 8, "launch", True)]
# The LM head at M = 1 (N = vocabulary rows of W): skinny configs against cuBLAS
LM_HEAD_CANDIDATES = [C(64, 128, 1, 4, 4, True), C(128, 128, 1, 4, 4, True), C(64, 256, 1, 4, 3, True),
                      C(32, 256, 1, 4, 4, True), C(32, 512, 1, 4, 3, True), C(16, 512, 1, 4, 4, True)]


ENGINE_MERGE_MIN, ENGINE_PRELOAD_MIN = (decode_attention.DECODE_LAUNCH_MERGE_MIN_SPLITS,
                                       decode_attention.DECODE_PRELOAD_MIN_SPLITS)


def attention_variant(splits, merge, preload):
    """Force the batch-1 graph's decode attention into a variant (None: the engine's own choice)."""
    fitted, counts = decode_attention.decode_num_splits, decode_attention.decode_split_counts
    cuda_graphs.decode_num_splits = fitted if splits is None else (lambda *args: splits)
    cuda_graphs.decode_split_counts = counts if splits is None else (lambda *args: [splits])
    decode_attention.DECODE_LAUNCH_MERGE_MIN_SPLITS = (ENGINE_MERGE_MIN if merge is None
                                                       else 1 if merge == "launch" else 10**6)
    decode_attention.DECODE_PRELOAD_MIN_SPLITS = ENGINE_PRELOAD_MIN if preload is None else 1 if preload else 10**6


def timed_variant(engine, reps: int, label: str, apply, restore) -> float | None:
    """ms per batch-1 replay with a variant applied (``apply()``, undone by ``restore()``); None,
    reported, where it does not compile or run."""
    apply()
    try:
        return replay_ms(engine, reps)
    except Exception as e:  # reported, not fatal
        print(f"  {label}: {type(e).__name__}: {e}"[:300], flush=True)
        return None
    finally:
        restore()


def sweep_attention(engine, reps: int, prompt_ids, contexts: list[int]) -> list[dict]:
    rows = []
    for context in contexts:
        for seq in list(engine.scheduler.running) + list(engine.scheduler.waiting):
            engine.abort(seq)
        engine.add_request(prompt_ids(context - 5), SamplingParams(temperature=0.0, max_tokens=100_000,
                                                                   ignore_eos=True))
        for _ in range(2):
            engine.step()
        for name, splits, merge, preload in ATTENTION_VARIANTS:
            ms = timed_variant(engine, reps, f"attention {name}", lambda: attention_variant(splits, merge, preload),
                               lambda: attention_variant(None, None, None))
            rows.append({"context": context, "variant": name, "ms": ms})
            if ms is not None:
                print(f"  context {context:5d}  {name:28s} {ms:.4f} ms", flush=True)
    return rows


def sweep_lm_head(engine, reps: int) -> list[dict]:
    """The LM head through cuBLAS (torch.mm into the graph's logits) and through each skinny config."""
    model = engine.runner.model
    engine_logits = model.compute_logits
    weight = model.model.embed_tokens if model.lm_head is None else model.lm_head.weight
    variants = [("cublas", lambda hidden, out=None: torch.mm(hidden, weight.t(), out=out))]
    variants += [(cfg, lambda hidden, out=None, cfg=cfg: _launch(hidden, weight, None, cfg, out=out))
                 for cfg in LM_HEAD_CANDIDATES]
    rows = []
    for label, logits in variants + variants[:1]:  # cuBLAS first and last: the drift shows
        ms = timed_variant(engine, reps, f"lm_head {label}", lambda: setattr(model, "compute_logits", logits),
                           lambda: setattr(model, "compute_logits", engine_logits))
        rows.append({"config": label if isinstance(label, str) else list(label), "ms": ms})
        if ms is not None:
            print(f"  lm_head {str(label):40s} {ms:.4f} ms ({1000 * (ms - rows[0]['ms']):+.1f} us per step)",
                  flush=True)
    return rows


def replay_ms(engine, reps: int) -> float:
    """Recapture the batch-1 graph under the current table, refill its inputs, time replays."""
    graphs = engine.runner.cuda_graphs
    graphs.capture(1)
    for _ in range(3):  # the capture filled the inputs with padding: real steps refill them
        engine.step()
    torch.cuda.synchronize()
    longest = max(len(s) for s in engine.scheduler.running)
    return replay_us(graphs.graph_for(1, longest), reps, trials=3) / 1000


def sweep_shape(shape: str, root: Path, reps: int, projections: list[str] | None = None,
                contexts: list[int] | None = None, lm_head: bool = False, max_model_len: int = 2048) -> dict:
    folder = write_config_folder(root / f"qwen3-{shape}", qwen3_config(**QWEN3_SHAPES[shape]), TOKENIZER)
    llm = LLM(str(folder), load_format="dummy", device="cuda", max_model_len=max_model_len, max_num_seqs=1,
              progress=False, enable_prefix_caching=False)
    engine = llm.engine
    engine.add_request(list(range(1000, 1128)), SamplingParams(temperature=0.0, max_tokens=100_000, ignore_eos=True))
    for _ in range(5):
        engine.step()
    out = {"shape": shape, "projections": {}}
    base = replay_ms(engine, reps)
    print(f"{shape}: table configs {base:.4f} ms per replay", flush=True)
    for proj, (key, candidates) in CANDIDATES[shape].items():
        if projections is not None and proj not in projections:
            continue
        table = skinny_config(1, key[1], key[2], key[0])
        rows = [{"config": list(table), "ms": base, "table": True}]
        for cfg in candidates:
            skinny_gemm.SKINNY_TABLE[key] = tuple(cfg)
            try:
                ms = replay_ms(engine, reps)
            except Exception as e:  # a config that does not compile or fit: reported, not fatal
                ms = None
                print(f"  {proj} {tuple(cfg)}: {type(e).__name__}: {e}"[:300], flush=True)
            finally:
                del skinny_gemm.SKINNY_TABLE[key]
            rows.append({"config": list(cfg), "ms": ms})
            if ms is not None:
                print(f"  {proj:8s} {str(tuple(cfg)):40s} {ms:.4f} ms ({1000 * (ms - base):+.1f} us per step)", flush=True)
        out["projections"][proj] = rows
    if lm_head:
        out["lm_head"] = sweep_lm_head(engine, reps)
    if contexts:
        out["attention"] = sweep_attention(engine, reps, lambda n: [1000 + i % 50_000 for i in range(n)], contexts)
    out["table_ms_end"] = replay_ms(engine, reps)
    print(f"{shape}: table configs again {out['table_ms_end']:.4f} ms", flush=True)
    del llm, engine
    torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="8B,0.6B")
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--projections", default="",
                   help="comma-separated subset of qkv,o,gate_up,down (default: all; 'none': no projection sweep)")
    p.add_argument("--attention-contexts", default="", help="comma-separated context lengths for the attention sweep")
    p.add_argument("--lm-head", action="store_true", help="also time the LM head's skinny configs against cuBLAS")
    p.add_argument("--max-model-len", type=int, default=2048, help="sets the block table's capacity (the split count)")
    p.add_argument("--out", type=Path, default=Path("gemv_engine_sweep.json"))
    a = p.parse_args()
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "shapes": []}
    with tempfile.TemporaryDirectory() as root:
        for s in a.shapes.split(","):
            projections = None if not a.projections else [p for p in a.projections.split(",") if p != "none"]
            contexts = [int(c) for c in a.attention_contexts.split(",") if c]
            results["shapes"].append(sweep_shape(s, Path(root), a.reps, projections, contexts, a.lm_head,
                                                 a.max_model_len))
            a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
