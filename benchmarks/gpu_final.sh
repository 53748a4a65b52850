#!/usr/bin/env bash
# One device call: every GPU test, then `ember bench` on Qwen3-8B and -0.6B shapes (dummy weights).
set -uo pipefail
OUT=${OUT:-/tmp/ember_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 EMBER_GPU_REPORT=$OUT/gpu_report.jsonl
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/pytest_gpu.log"
python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee -a "$OUT/pytest_gpu.log" | tail -15
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
python3 -m ember.cli.main bench -m /tmp/qwen3-8B --load-format dummy --batch-sizes 1,32 --prompt-lens 128,2048,8192 \
  --gen-len 128 --reps 2 --out "$OUT/bench-8B" 2>&1 | tail -20
python3 -m ember.cli.main bench -m /tmp/qwen3-0.6B --load-format dummy --batch-sizes 1,32 --prompt-lens 128 \
  --gen-len 256 --reps 3 --out "$OUT/bench-0.6B" 2>&1 | tail -12
