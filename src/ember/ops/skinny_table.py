"""The skinny GEMM's measured tuning table (see ``ember.ops.skinny_gemm.skinny_config``).

Data, not code: benchmarks/gemv_sweep.py prints these entries; paste its output here.
"""

# (op, N = rows of W, K, M rounded up to a power of two) -> SkinnyConfig fields, or None where the
# Triton kernel lost: the op then runs unfused (cuBLAS for the product). The fused ops
# (ember.ops.skinny_gemm.OPS) use the shape's "linear" entry unless they have one of their own.
# Filled from the dict that benchmarks/gemv_sweep.py prints; shapes it lacks use the heuristic.
# Measured on an H200, Qwen3-0.6B and -8B, in benchmarks/results/: M buckets 1 and 2 in
# 2026-11-22-h200-gemv-sweep-m1-m2.txt, bucket 32 in ...-gemv-sweep-m32.txt, the other buckets
# in ...-norm-linear-sweep.txt.
SKINNY_TABLE: dict[tuple[str, int, int, int], tuple | None] = {
    # (op, N, K, M bucket): (block_n, block_k, split_k, num_warps, num_stages, dot), None = fallback
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
