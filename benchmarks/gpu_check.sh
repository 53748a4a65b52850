#!/usr/bin/env bash
# One call on the GPU machine: versions, every GPU test, and a first eager decode timing.
# Usage (device tool): bash benchmarks/gpu_check.sh   (writes under $OUT when set)
set -uo pipefail
OUT=${OUT:-/tmp/ember_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 EMBER_GPU_REPORT=$OUT/gpu_report.jsonl
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider tests ${EMBER_PYTEST_ARGS:-} 2>&1 | tee "$OUT/pytest_gpu.log" | tail -40
python3 benchmarks/eager_decode.py 2>&1 | tee "$OUT/eager_decode.txt"
