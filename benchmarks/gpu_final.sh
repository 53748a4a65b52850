#!/usr/bin/env bash
# The device calls that produce the committed results (Qwen3-0.6B/8B shapes, dummy weights).
# Usage: bash benchmarks/gpu_final.sh STEP...   with STEP among
#   tests        every GPU test of the engine, graphs and projections (also: gputests)
#   kerneltests  the kernel tests alone (linear, attention, norm), compiled on the GPU
#   attn_sweep   benchmarks/decode_attention_sweep.py: split count, split length, merge mode
#   attn_fused   benchmarks/decode_attention_sweep.py --fused: q/k-norm + RoPE folded into attention or not
#   norm_sweep   benchmarks/gemv_sweep.py for the fused forms only (add epilogue, folded norm,
#                silu epilogue), M = 1 and 2
#   norm_sweep_big  the same for 0.6B at M = 4..32 (the table has these fused ops off there, unswept)
#   tp06         benchmarks/throughput.py, 0.6B, Ember alone
#   sweep        benchmarks/gemv_sweep.py: skinny GEMM vs cuBLAS at the 0.6B and 8B projections
#   engine_sweep benchmarks/gemv_engine_sweep.py: batch-1 tile candidates timed inside the decode graph
#   pdl          benchmarks/pdl_check.py: the decode graph with and without PDL
#   breakdown    benchmarks/step_breakdown.py (graph GPU time, host phases, kernels)
#   timeline     benchmarks/decode_timeline.py: batch-1 decode steps' device timeline and gaps, 0.6B and 8B
#   throughput   benchmarks/throughput.py: 0.6B with HF in the same run, 8B Ember alone
#   bench        bench8 then bench06
#   bench8       ember bench: the 8B grid (issue #3's batch 1 / 32 at 128, 2,048 and 8,192 tokens)
#   bench06      ember bench: 0.6B with --compare hf (eager) --profile
#   bench06e     the same, Ember alone (a quicker check of a decode-path change)
#   hfc06        ember bench 0.6B --compare hf, HF's static cache + torch.compile only (compiles per shape)
#   hf8          ember bench 8B --compare hf (eager) at 128 tokens: writes and loads a 16 GB checkpoint
#   hf8all       the same at 128, 2,048 and 8,192 tokens (issue #3's ratios at every target)
#   serve        benchmarks/serve_load.py against ember serve (needs the .whl folder carried)
set -uo pipefail
OUT=${OUT:-/tmp/ember_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 EMBER_GPU_REPORT=$OUT/gpu_report.jsonl
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
python3 - <<'PY'
from ember.tools.random_checkpoint import QWEN3_SHAPES, qwen3_config, write_config_folder
for s in ("0.6B", "8B"):
    write_config_folder(f"/tmp/qwen3-{s}", qwen3_config(**QWEN3_SHAPES[s]), "tests/data/qwen3-tokenizer")
PY
bench() { timeout ${BENCH_TIMEOUT:-230} python3 -m ember.cli.main bench --load-format dummy "$@" 2>&1 | tail -14; }
for step in "$@"; do
  case $step in
    tests|gputests) timeout ${GPUTESTS_TIMEOUT:-570} python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops \
             tests/gpu tests/engine 2>&1 | tee "$OUT/pytest_gpu.log" | tail -6 ;;
    kerneltests) timeout 300 python3 -m pytest -q -p no:cacheprovider tests/ops/test_linear.py \
             tests/ops/test_attention.py tests/ops/test_norm.py 2>&1 | tee "$OUT/pytest_kernels.log" | tail -6 ;;
    attn_sweep) timeout 300 python3 benchmarks/decode_attention_sweep.py --out "$OUT/decode_attention_sweep.json" \
             2>&1 | tee "$OUT/decode_attention_sweep.txt" | grep -v "^      " ;;
    attn_fused) timeout 240 python3 benchmarks/decode_attention_sweep.py --fused --batch-sizes 1,32 \
             --contexts 128,2048,8192 --out "$OUT/attn_fused.json" 2>&1 | tee "$OUT/attn_fused.txt" | grep -v "^      " ;;
    norm_sweep) timeout 300 python3 benchmarks/gemv_sweep.py --models 0.6B,8B --ms 1,2 \
             --ops linear_add,rms_norm_linear,rms_norm_gate_silu \
             --out "$OUT/norm_sweep.json" 2>&1 | tee "$OUT/norm_sweep.txt" | tail -50 ;;
    norm_sweep_big) timeout 420 python3 benchmarks/gemv_sweep.py --models 0.6B --ms 4,8,16,32 \
             --ops linear_add,rms_norm_linear,rms_norm_gate_silu \
             --out "$OUT/norm_sweep_big.json" 2>&1 | tee "$OUT/norm_sweep_big.txt" | tail -40 ;;
    tp06) timeout 150 python3 benchmarks/throughput.py -m /tmp/qwen3-0.6B --load-format dummy --out "$OUT/tp-0.6B" \
             2>&1 | tail -25 ;;
    engine_sweep) timeout 330 python3 benchmarks/gemv_engine_sweep.py --shapes 8B,0.6B \
             --out "$OUT/gemv_engine_sweep.json" 2>&1 | tee "$OUT/gemv_engine_sweep.txt" | grep -v Warning ;;
    sweep) timeout 240 python3 benchmarks/gemv_sweep.py --models 0.6B,8B --out "$OUT/gemv_sweep.json" 2>&1 \
             | tee "$OUT/gemv_sweep.txt" | tail -45 ;;
    pdl) timeout 280 python3 benchmarks/pdl_check.py --shapes 0.6B,8B --batch-sizes 1,32 --out "$OUT/pdl_check.json" ;;
    breakdown) timeout 200 python3 benchmarks/step_breakdown.py --shapes 0.6B,8B --batch-sizes 1,32 \
             --out "$OUT/step_breakdown.json" 2>&1 | grep -v -i warn | tee "$OUT/step_breakdown.txt" ;;
    timeline) for m in 0.6B 8B; do timeout 110 python3 benchmarks/decode_timeline.py -m /tmp/qwen3-$m \
             --out "$OUT/tl-$m" 2>&1 | grep -v -i warn; done ;;
    throughput)
      timeout 300 python3 benchmarks/throughput.py -m /tmp/qwen3-0.6B --load-format dummy --compare hf \
        --hf-num-requests 64 --hf-batch-size 64 --out "$OUT/tp-0.6B" 2>&1 | grep -E "^\| |throughput: (Ember|HF):"
      timeout 150 python3 benchmarks/throughput.py -m /tmp/qwen3-8B --load-format dummy --out "$OUT/tp-8B" 2>&1 \
        | grep -E "^\| |throughput: Ember:" ;;
    bench) bash "$0" bench8 bench06 ;;
    bench8) bench -m /tmp/qwen3-8B --batch-sizes 1,32 --prompt-lens 128,2048,8192 --gen-len 256 --reps 2 \
        --out "$OUT/b8" ;;
    bench06) BENCH_TIMEOUT=330 bench -m /tmp/qwen3-0.6B --batch-sizes 1,32 --prompt-lens 128 --gen-len 256 --reps 3 \
        --compare hf --hf-variants eager --profile --out "$OUT/b06" ;;
    bench06e) bench -m /tmp/qwen3-0.6B --batch-sizes 1,32 --prompt-lens 128 --gen-len 256 --reps 3 --profile \
        --out "$OUT/b06" ;;
    hfc06) BENCH_TIMEOUT=400 bench -m /tmp/qwen3-0.6B --batch-sizes 1,32 --prompt-lens 128 --gen-len 256 --reps 2 \
        --compare hf --hf-variants static_compiled --out "$OUT/b06c" ;;
    hf8) timeout 420 python3 -m ember.cli.main bench --load-format dummy -m /tmp/qwen3-8B --batch-sizes 1,32 \
        --prompt-lens 128 --gen-len 64 --reps 1 --compare hf --hf-variants eager --out "$OUT/b8hf" 2>&1 | tail -14 ;;
    hf8all) timeout 540 python3 -m ember.cli.main bench --load-format dummy -m /tmp/qwen3-8B --batch-sizes ${HF8_BATCHES:-1,32} \
        --prompt-lens 128,2048,8192 --gen-len 64 --reps 1 --compare hf --hf-variants eager --out "$OUT/b8hf" 2>&1 \
        | tail -20 ;;
    serve)
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
      PYTHONPATH=$PYTHONPATH:/tmp/site timeout 240 python3 benchmarks/serve_load.py -m /tmp/qwen3-0.6B \
        --load-format dummy --concurrency 1,16,64 --num-requests 64 --max-seconds 25 --out "$OUT/serve" 2>&1 | tail -12 ;;
  esac
done
