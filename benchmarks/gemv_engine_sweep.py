"""The batch-1 projections' tile configs measured where they run: inside the engine's decode graph.

``gemv_sweep.py`` times each projection after itself, so a config that starts slowly behind the
previous kernel, or leaves a long tail before the next one, looks better than it is in the
engine. Here one decode graph of the real model (dummy weights, a 128-token context) is
recaptured for each candidate config of one projection, the others at the table's, and timed as
back-to-back replays (CUDA events). The table's config is measured first and last, so drift
between the two shows in the output. Results: one JSON with every candidate's ms per replay.

    python benchmarks/gemv_engine_sweep.py --shapes 8B,0.6B --out sweep.json
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
from ember.ops import skinny_gemm
from ember.ops.skinny_gemm import SkinnyConfig, skinny_config
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


def replay_ms(engine, reps: int) -> float:
    """Recapture the batch-1 graph under the current table, refill its inputs, time replays."""
    graphs = engine.runner.cuda_graphs
    graphs.capture(1)
    for _ in range(3):  # the capture filled the inputs with padding: real steps refill them
        engine.step()
    torch.cuda.synchronize()
    return replay_us(graphs.graphs[1], reps, trials=3) / 1000


def sweep_shape(shape: str, root: Path, reps: int, projections: list[str] | None = None) -> dict:
    folder = write_config_folder(root / f"qwen3-{shape}", qwen3_config(**QWEN3_SHAPES[shape]), TOKENIZER)
    llm = LLM(str(folder), load_format="dummy", device="cuda", max_model_len=2048, max_num_seqs=1,
              progress=False, enable_prefix_caching=False)
    engine = llm.engine
    engine.add_request(list(range(1000, 1128)), SamplingParams(temperature=0.0, max_tokens=100_000, ignore_eos=True))
    for _ in range(5):
        engine.step()
    out = {"shape": shape, "projections": {}}
    base = replay_ms(engine, reps)
    print(f"{shape}: table configs {base:.4f} ms per replay", flush=True)
    for proj, (key, candidates) in CANDIDATES[shape].items():
        if projections and proj not in projections:
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
    out["table_ms_end"] = replay_ms(engine, reps)
    print(f"{shape}: table configs again {out['table_ms_end']:.4f} ms", flush=True)
    del llm, engine
    torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="8B,0.6B")
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--projections", default="", help="comma-separated subset of qkv,o,gate_up,down (default: all)")
    p.add_argument("--out", type=Path, default=Path("gemv_engine_sweep.json"))
    a = p.parse_args()
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "shapes": []}
    with tempfile.TemporaryDirectory() as root:
        for s in a.shapes.split(","):
            results["shapes"].append(sweep_shape(s, Path(root), a.reps, [p for p in a.projections.split(",") if p]))
            a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
