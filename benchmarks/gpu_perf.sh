#!/usr/bin/env bash
# One device call for performance work: GPU tests of the kernels and engine, the skinny-GEMM
# sweep, the decode-step breakdown and offline throughput (Qwen3-0.6B/8B shapes, dummy weights).
# Usage: bash benchmarks/gpu_perf.sh [tests] [sweep] [breakdown] [throughput]   (default: all)
set -uo pipefail
OUT=${OUT:-/tmp/ember_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 EMBER_GPU_REPORT=$OUT/gpu_report.jsonl
steps=${*:-tests sweep breakdown throughput}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
python3 - <<'PY'
import json, shutil
from pathlib import Path
from ember.tools.random_checkpoint import QWEN3_SHAPES, qwen3_config
for s in ("0.6B", "8B"):
    d = Path(f"/tmp/qwen3-{s}"); d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(qwen3_config(**QWEN3_SHAPES[s])))
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(Path("tests/data/qwen3-tokenizer") / f, d / f)
PY
for step in $steps; do
  case $step in
    tests) timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops tests/gpu tests/engine 2>&1 \
             | tee "$OUT/pytest_gpu.log" | tail -8 ;;
    sweep) timeout 240 python3 benchmarks/gemv_sweep.py --models 0.6B,8B --out "$OUT/gemv_sweep.json" 2>&1 \
             | tee "$OUT/gemv_sweep.txt" | tail -45 ;;
    breakdown) timeout 200 python3 benchmarks/step_breakdown.py --shapes 0.6B,8B --batch-sizes 1,32 \
             --out "$OUT/step_breakdown.json" 2>&1 | grep -v Warn | tee "$OUT/step_breakdown.txt" ;;
    throughput) timeout 150 python3 benchmarks/throughput.py -m /tmp/qwen3-0.6B --load-format dummy \
             --out "$OUT/tp06" 2>&1 | tail -4 ;;
  esac
done
