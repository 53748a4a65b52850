"""Skinny GEMM (linear, silu_mul_linear): kernel against reference, dispatch policy, GPU + CUDA graphs.

Kernels run on CUDA when there is a GPU, else on CPU tensors in the Triton interpreter.
The kernel sums in fp32 in another order than the reference's GEMM and rounds once, so the check
is ‖out - ref‖ / ‖ref‖ (1e-5 fp32, 1e-3 fp16, 1e-2 bf16) plus an elementwise one at about 2 ulp
with an absolute floor of that norm tolerance times the output's rms (for sums that cancel).
In the interpreter, which truncates fp32 -> bf16 casts instead of rounding, the fused bf16 variant
drifts further from the reference (silu, the product and the output each truncated, all towards
zero), so there it gets twice the tolerance; its exact check is against the unfused kernels.
"""

import importlib

import pytest
import torch
from kernel_check import DEVICE, DTYPES

from ember.ops.activation import silu_mul_reference, silu_mul_triton
from ember.ops.norm import add_rms_norm_triton, rms_norm_triton
from ember.ops.linear import (
    SKINNY_MAX_M,
    SkinnyConfig,
    add_rms_norm_linear,
    add_rms_norm_linear_reference,
    add_rms_norm_linear_triton,
    linear,
    linear_reference,
    linear_triton,
    silu_mul_linear,
    silu_mul_linear_reference,
    silu_mul_linear_triton,
    skinny_config,
)
from ember.tools.random_checkpoint import QWEN3_SHAPES

skinny = importlib.import_module("ember.ops.linear")  # the module: ember.ops.linear is the op

NORM_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
RTOL = {torch.float32: 1e-5, torch.float16: 2**-9, torch.bfloat16: 2**-6}
# Small blocks so N = 72, K = 200 span several programs, a partial column block and a partial K step.
CONFIGS = {
    "dot": SkinnyConfig(16, 64, 1, 4, 2, True),
    "dot-split": SkinnyConfig(16, 32, 4, 4, 2, True),
    "fma": SkinnyConfig(8, 32, 1, 4, 1, False),
    "fma-split": SkinnyConfig(4, 64, 3, 4, 1, False),
}


def assert_gemm_close(out, ref, loosen=1.0):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    out, ref, dtype = out.float(), ref.float(), out.dtype
    assert torch.isfinite(out).all()
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < loosen * NORM_TOL[dtype], rel
    atol = loosen * NORM_TOL[dtype] * ref.pow(2).mean().sqrt().item()
    torch.testing.assert_close(out, ref, rtol=loosen * RTOL[dtype], atol=atol)


def make(shape, dtype, device=DEVICE, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=gen)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("bias", [False, True], ids=["", "bias"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 16])
def test_linear_kernel_matches_reference(m, dtype, bias, config):
    x, w = make((m, 200), dtype, seed=m), make((72, 200), dtype, scale=0.1, seed=100 + m)
    b = make((72,), dtype, seed=200 + m) if bias else None
    assert_gemm_close(linear_triton(x, w, b, config=config), linear_reference(x, w, b))


@pytest.mark.parametrize("config", [SkinnyConfig(16, 64, 2, 4, 2, True), SkinnyConfig(8, 64, 4, 4, 1, False)])
def test_even_k_and_strided_rows(config):
    wide = make((5, 512), torch.float16)
    x = wide[:, :256]  # row stride 512: the kernel takes any row stride
    w = make((64, 256), torch.float16, scale=0.1, seed=1)
    assert_gemm_close(linear_triton(x, w, config=config), linear_reference(x, w))


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 16])
def test_silu_mul_linear_kernel(m, dtype, config):
    # Scale 3 reaches silu's tails, where the rounding of silu before the product matters most.
    gate_up, w = make((m, 400), dtype, scale=3.0, seed=m), make((72, 200), dtype, scale=0.1, seed=7)
    out = silu_mul_linear_triton(gate_up, w, config=config)
    loosen = 2.0 if dtype == torch.bfloat16 and DEVICE == "cpu" else 1.0
    assert_gemm_close(out, silu_mul_linear_reference(gate_up, w), loosen)
    # Same roundings as ops.silu_mul, then the same kernel: identical bits.
    assert torch.equal(out, linear_triton(silu_mul_triton(gate_up), w, config=config))


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("with_residual", [False, True], ids=["first-layer", "residual"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 16])
def test_add_rms_norm_linear_kernel(m, dtype, with_residual, config):
    # Hidden 200: the statistics pass ends on a partial chunk, the GEMM on a partial K step; the
    # split configs check that exactly one program (the first) stores the residual sum.
    x, w = make((m, 200), dtype, scale=2.0, seed=m), make((72, 200), dtype, scale=0.1, seed=7)
    residual = make((m, 200), dtype, seed=50 + m) if with_residual else None
    norm_w = make((200,), dtype, seed=9) + 1.0
    bias = make((72,), dtype, seed=8)
    out, res_out = add_rms_norm_linear_triton(x, residual, norm_w, 1e-6, w, bias, config=config)
    loosen = 2.0 if dtype == torch.bfloat16 and DEVICE == "cpu" else 1.0  # truncating casts, see above
    assert_gemm_close(out, add_rms_norm_linear_reference(x, residual, norm_w, 1e-6, w, bias)[0], loosen)
    if residual is None:
        assert res_out is x
        normed = rms_norm_triton(x, norm_w, 1e-6)
    else:  # the sum is the norm kernel's, bit for bit
        normed, expected_sum = add_rms_norm_triton(x, residual, norm_w, 1e-6)
        assert torch.equal(res_out, expected_sum)
    # Same roundings as the norm kernel followed by the same GEMM, up to the order of the
    # fp32 sum of squares (which may move a rounding by one ulp).
    assert_gemm_close(out, linear_triton(normed, w, bias, config=config))


def test_add_rms_norm_linear_dispatch(monkeypatch):
    x, w = make((3, 200), torch.bfloat16), make((72, 200), torch.bfloat16, seed=1)
    residual, norm_w = make((3, 200), torch.bfloat16, seed=2), make((200,), torch.bfloat16, seed=3)
    if DEVICE == "cpu":  # off CUDA: the reference path, bit for bit
        for res in (None, residual):
            out, summed = add_rms_norm_linear(x, res, norm_w, 1e-6, w)
            ref_out, ref_sum = add_rms_norm_linear_reference(x, res, norm_w, 1e-6, w)
            assert torch.equal(out, ref_out) and torch.equal(summed, ref_sum)
    launches = []
    monkeypatch.setattr(skinny, "use_triton", lambda t: True)
    monkeypatch.setattr(skinny, "_launch", lambda *args, **kw: launches.append(kw["op"]) or ("kernel", None))
    monkeypatch.setitem(skinny.SKINNY_TABLE, ("add_rms_norm_linear", 72, 200, 4), (16, 64, 1, 4, 2, True))
    assert add_rms_norm_linear(x, residual, norm_w, 1e-6, w)[0] == "kernel"
    assert launches == ["add_rms_norm_linear"]
    # The fused op runs only where the table has a measured entry for it (there is no heuristic):
    # elsewhere the norm kernel, then ops.linear.
    monkeypatch.delitem(skinny.SKINNY_TABLE, ("add_rms_norm_linear", 72, 200, 4))
    assert skinny_config(3, 72, 200, "add_rms_norm_linear") is None
    assert skinny_config(3, 72, 200, "linear") is not None


def test_silu_mul_linear_reference_is_the_unfused_path():
    gate_up, w = make((3, 192), torch.bfloat16, scale=3.0), make((40, 96), torch.bfloat16, seed=1)
    assert torch.equal(silu_mul_linear_reference(gate_up, w), linear_reference(silu_mul_reference(gate_up), w))


def test_split_k_resets_its_counters_and_is_deterministic():
    x, w = make((4, 200), torch.float32), make((72, 200), torch.float32, seed=1)
    first = linear_triton(x, w, config=CONFIGS["dot-split"])
    assert torch.equal(first, linear_triton(x, w, config=CONFIGS["dot-split"]))
    _, counters = skinny._workspaces[x.device]
    assert not counters.any()


def test_dispatcher_uses_the_reference_off_cuda():
    x, w = make((3, 200), torch.bfloat16), make((72, 200), torch.bfloat16, seed=1)
    gate_up = make((3, 400), torch.bfloat16, scale=3.0)
    if DEVICE == "cpu":
        assert torch.equal(linear(x, w), linear_reference(x, w))
        assert torch.equal(silu_mul_linear(gate_up, w), silu_mul_linear_reference(gate_up, w))


def test_dispatch_policy(monkeypatch):
    """With Triton allowed: the kernel for <= SKINNY_MAX_M rows of bf16/fp16, F.linear otherwise."""
    launches = []
    monkeypatch.setattr(skinny, "use_triton", lambda t: True)
    monkeypatch.setattr(skinny, "_launch", lambda *args, **kw: launches.append(args[0].shape) or "kernel")
    w = make((72, 200), torch.bfloat16, seed=1)
    assert linear(make((skinny._HEURISTIC_MAX_M, 200), torch.bfloat16), w) == "kernel"
    # Past the heuristic's rows, only a measured table entry runs the kernel.
    x32 = make((SKINNY_MAX_M, 200), torch.bfloat16)
    assert torch.equal(linear(x32, w), linear_reference(x32, w))
    monkeypatch.setitem(skinny.SKINNY_TABLE, ("linear", 72, 200, SKINNY_MAX_M), (16, 64, 1, 4, 2, True))
    assert linear(x32, w) == "kernel"
    assert silu_mul_linear(make((1, 400), torch.bfloat16), w) == "kernel"
    for x, weight in [
        (make((SKINNY_MAX_M + 1, 200), torch.bfloat16), w),  # prefill-sized
        (make((4, 200), torch.float32), w.float()),  # fp32 models keep cuBLAS
        (make((4, 200), torch.bfloat16).t().contiguous().t(), w),  # not contiguous
    ]:
        assert torch.equal(linear(x, weight), linear_reference(x, weight))
    gate_up = make((SKINNY_MAX_M + 1, 400), torch.bfloat16)
    assert torch.equal(silu_mul_linear(gate_up, w), silu_mul_linear_reference(gate_up, w))
    assert launches == [(skinny._HEURISTIC_MAX_M, 200), (SKINNY_MAX_M, 200), (1, 400)]
    # A table entry of None hands the shape back to cuBLAS (for the fused op: silu_mul, then linear).
    monkeypatch.setitem(skinny.SKINNY_TABLE, ("linear", 72, 200, 4), None)
    x = make((3, 200), torch.bfloat16)
    assert torch.equal(linear(x, w), linear_reference(x, w))


def test_skinny_config_table_and_heuristic(monkeypatch):
    assert skinny_config(SKINNY_MAX_M + 1, 4096, 4096) is None
    monkeypatch.setitem(skinny.SKINNY_TABLE, ("linear", 4096, 4096, 8), (32, 256, 1, 4, 3, True))
    assert skinny_config(5, 4096, 4096) == SkinnyConfig(32, 256, 1, 4, 3, True)  # M bucket 8
    assert skinny_config(9, 4096, 4096) != SkinnyConfig(32, 256, 1, 4, 3, True)
    # The heuristic's configs at every Qwen3 projection fit the split-K workspace and divide K evenly.
    for shape in QWEN3_SHAPES.values():
        h, i = shape["hidden_size"], shape["intermediate_size"]
        q, kv = shape["num_attention_heads"] * 128, shape["num_key_value_heads"] * 128
        for op, n, k in [("linear", q + 2 * kv, h), ("linear", h, q), ("linear", 2 * i, h),
                         ("linear", h, i), ("silu_mul_linear", h, i)]:
            for m in (1, 16):
                cfg = skinny._heuristic_config(m, n, k, op)
                blocks = -(-n // cfg.block_n)
                assert k % (cfg.block_k * cfg.split_k) == 0, (op, n, k, cfg)
                assert cfg.split_k * blocks * cfg.block_n * 16 <= skinny._WORKSPACE_FLOATS
                assert blocks * cfg.split_k >= 128, (op, n, k, cfg)


# ------------------------------------------------------------------------------------------ GPU
GPU_SHAPES = [(4096, 1024), (1024, 3072), (1024, 2048), (6144, 4096)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", GPU_SHAPES)
@pytest.mark.parametrize("m", [1, 4, 16, 32])
def test_gpu_real_shapes(m, n, k, dtype):
    x, w = make((m, k), dtype, "cuda", seed=m), make((n, k), dtype, "cuda", scale=0.02, seed=1)
    assert_gemm_close(linear(x, w), linear_reference(x, w))
    for config in [SkinnyConfig(16, 256, 4, 4, 4, True), SkinnyConfig(4, 128, 2, 4, 1, False)]:  # both split
        assert_gemm_close(linear_triton(x, w, config=config), linear_reference(x, w))
    gate_up = make((m, 2 * k), dtype, "cuda", scale=3.0, seed=2)
    assert_gemm_close(silu_mul_linear(gate_up, w), silu_mul_linear_reference(gate_up, w))
    residual, norm_w = make((m, k), dtype, "cuda", seed=3), make((k,), dtype, "cuda", seed=4)
    for res in (None, residual):  # the fused kernel (table or heuristic config) and the dispatcher
        ref, ref_sum = add_rms_norm_linear_reference(x, res, norm_w, 1e-6, w)
        for out, summed in (add_rms_norm_linear_triton(x, res, norm_w, 1e-6, w),
                            add_rms_norm_linear(x, res, norm_w, 1e-6, w)):
            assert_gemm_close(out, ref)
            torch.testing.assert_close(summed, ref_sum, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("config", [None, SkinnyConfig(16, 256, 4, 4, 4, True)], ids=["policy", "split-k"])
def test_gpu_cuda_graph_capture(config):
    m, n, k = 4, 1024, 3072
    x, w = make((m, k), torch.bfloat16, "cuda"), make((n, k), torch.bfloat16, "cuda", scale=0.02, seed=1)
    gate_up = make((m, 2 * k), torch.bfloat16, "cuda", scale=3.0, seed=2)
    w_up = make((n, k), torch.bfloat16, "cuda", scale=0.02, seed=3)

    def step():
        if config is None:
            return linear(x, w), silu_mul_linear(gate_up, w_up)
        return linear_triton(x, w, config=config), silu_mul_linear_triton(gate_up, w_up, config=config)

    step()  # compile and create the split-K workspace outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, fused = step()
    for seed in (10, 11):  # new inputs, same addresses: the replay must see them
        x.copy_(make((m, k), torch.bfloat16, "cuda", seed=seed))
        gate_up.copy_(make((m, 2 * k), torch.bfloat16, "cuda", scale=3.0, seed=seed))
        graph.replay()
        torch.cuda.synchronize()
        assert_gemm_close(out, linear_reference(x, w))
        assert_gemm_close(fused, silu_mul_linear_reference(gate_up, w_up))
