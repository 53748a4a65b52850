"""The skinny GEMM's measured tuning table (see ``ember.ops.skinny_gemm.skinny_config``).

Data, not code: benchmarks/gemv_sweep.py prints these entries; paste its output here.
"""

# (op, N = rows of W, K, M rounded up to a power of two) -> SkinnyConfig fields, or None where the
# Triton kernel lost: the op then runs unfused (cuBLAS for the product). The fused ops
# (ember.ops.skinny_gemm.OPS) use the shape's "linear" entry unless they have one of their own.
# Filled from the dict that benchmarks/gemv_sweep.py prints; shapes it lacks use the heuristic.
# Measured on an H200, Qwen3-0.6B and -8B, in benchmarks/results/: "linear" M buckets 1 and 2 in
# 2026-11-22-h200-gemv-sweep-m1-m2.txt, bucket 32 in ...-gemv-sweep-m32.txt, the other buckets
# in ...-norm-linear-sweep.txt; the fused ops in ...-fused-sweep-*.txt (session 5).
# A fused op's entry decides for a pair: "linear_add" only pays if the next projection's
# "rms_norm_*" runs too (else the add is free inside add_rms_norm).
SKINNY_TABLE: dict[tuple[str, int, int, int], tuple | None] = {
    # (op, N, K, M bucket): (block_n, block_k, split_k, num_warps, num_stages, dot[, x_left]),
    # None = fallback
    # The fused ops at M = 1 and 2 use their shape's "gate_silu" or "linear" entry: since session 9
    # the norm's weight lives in W and its 1 / rms scales the accumulator, so their K loop is the
    # plain product's. Not measured at M >= 4: unfused there (0.6B batch 32 decoded at 1.53 ms
    # per token with the "linear" entries against 1.41 unfused in session 4, with the old fold).
    **{(op, n, k, m): None for op, n, k in [("linear_add", 1024, 2048), ("linear_add", 1024, 3072),
                                            ("rms_norm_linear", 4096, 1024), ("rms_norm_gate_silu", 6144, 1024),
                                            ("linear_add", 4096, 4096), ("linear_add", 4096, 12288),
                                            ("rms_norm_linear", 6144, 4096), ("rms_norm_gate_silu", 24576, 4096)]
       for m in (4, 8, 16, 32)},
    # Measured inside the decode graph (benchmarks/gemv_engine_sweep.py, session 9): 0.6B's qkv at
    # M = 1 with 64 wide tiles (64 programs) took 48 us less per step than the isolated sweep's
    # pick; every other batch-1 projection of 0.6B and 8B kept its entry (none of 4-5 candidates won).
    ("rms_norm_linear", 4096, 1024, 1): (64, 256, 1, 4, 3, True),
    ("gate_silu", 6144, 1024, 1): (8, 512, 1, 4, 4, False),
    ("gate_silu", 6144, 1024, 2): (64, 128, 1, 4, 4, True),
    # "lm_head": the vocabulary projection, only where measured (ember.ops.linear.lm_head): inside
    # the batch-1 decode graph (benchmarks/gemv_engine_sweep.py --lm-head, session 12) these tiles
    # took 2.8-4.7 us (0.6B, two runs) and 23 us (8B, one run) less per step than cuBLAS and its
    # memset node; the other tiles tried lost or tied.
    ("lm_head", 151936, 1024, 1): (64, 128, 1, 4, 4, True),
    ("lm_head", 151936, 4096, 1): (64, 128, 1, 4, 4, True),
    # "linear": the plain projections
    ("linear", 4096, 1024, 1): (32, 256, 1, 4, 4, True),
    ("linear", 4096, 1024, 2): (32, 256, 1, 4, 4, True),
    ("linear", 4096, 1024, 4): (32, 256, 1, 4, 4, True),
    ("linear", 4096, 1024, 8): (64, 256, 1, 4, 3, True),
    ("linear", 4096, 1024, 16): (64, 256, 1, 4, 3, True),
    ("linear", 4096, 1024, 32): (64, 256, 1, 4, 3, True),
    ("linear", 1024, 2048, 1): (4, 1024, 1, 4, 3, False),
    ("linear", 1024, 2048, 2): (4, 1024, 1, 4, 3, False),
    ("linear", 1024, 2048, 4): (64, 128, 4, 4, 4, True),
    ("linear", 1024, 2048, 8): (64, 128, 4, 4, 4, True),
    ("linear", 1024, 2048, 16): (64, 128, 4, 4, 4, True),
    ("linear", 1024, 2048, 32): (64, 128, 4, 4, 4, True),
    ("linear", 6144, 1024, 1): (8, 512, 1, 4, 4, False),
    ("linear", 6144, 1024, 2): (64, 128, 1, 4, 4, True),
    ("linear", 6144, 1024, 4): (64, 128, 1, 4, 4, True),
    ("linear", 6144, 1024, 8): (64, 128, 1, 4, 4, True),
    ("linear", 6144, 1024, 16): (64, 128, 1, 4, 4, True),
    ("linear", 6144, 1024, 32): (64, 128, 1, 4, 4, True),
    ("linear", 1024, 3072, 1): (4, 1024, 1, 4, 3, False),
    ("linear", 1024, 3072, 2): (4, 1024, 1, 4, 3, False),
    ("linear", 1024, 3072, 4): (32, 256, 4, 4, 4, True),
    ("linear", 1024, 3072, 8): (32, 256, 4, 4, 4, True),
    ("linear", 1024, 3072, 16): (32, 256, 4, 4, 4, True),
    ("linear", 1024, 3072, 32): (32, 256, 4, 4, 4, True),
    ("linear", 6144, 4096, 1): (64, 256, 1, 4, 3, True),
    ("linear", 6144, 4096, 2): (64, 256, 1, 4, 3, True),
    ("linear", 6144, 4096, 4): (64, 256, 1, 4, 3, True),
    ("linear", 6144, 4096, 8): None,
    ("linear", 6144, 4096, 16): (64, 256, 1, 4, 3, True),
    ("linear", 6144, 4096, 32): None,
    ("linear", 4096, 4096, 1): (64, 256, 2, 4, 3, True),
    ("linear", 4096, 4096, 2): (64, 256, 2, 4, 3, True),
    ("linear", 4096, 4096, 4): (64, 128, 4, 4, 4, True),
    ("linear", 4096, 4096, 8): (64, 128, 4, 4, 4, True),
    ("linear", 4096, 4096, 16): (64, 128, 4, 4, 4, True),
    ("linear", 4096, 4096, 32): (64, 128, 4, 4, 4, True),
    ("linear", 24576, 4096, 1): (64, 128, 1, 4, 4, True),
    ("linear", 24576, 4096, 2): (64, 128, 1, 4, 4, True),
    ("linear", 24576, 4096, 4): (64, 128, 1, 4, 4, True),
    ("linear", 24576, 4096, 8): (64, 128, 1, 4, 4, True),
    ("linear", 24576, 4096, 16): None,
    ("linear", 24576, 4096, 32): None,
    ("linear", 4096, 12288, 1): (64, 128, 4, 4, 4, True),
    ("linear", 4096, 12288, 2): (64, 128, 4, 4, 4, True),
    ("linear", 4096, 12288, 4): (64, 128, 4, 4, 4, True),
    ("linear", 4096, 12288, 8): (64, 128, 4, 4, 4, True),
    ("linear", 4096, 12288, 16): (64, 128, 4, 4, 4, True),
    ("linear", 4096, 12288, 32): (64, 128, 4, 4, 4, True),
}
