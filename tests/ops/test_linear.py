"""Skinny GEMM (linear, linear_add, rms_norm_linear, linear_silu_mul): kernel against reference,
dispatch policy, GPU + CUDA graphs.

Kernels run on CUDA when there is a GPU, else on CPU tensors in the Triton interpreter.
The kernel sums in fp32 in another order than the reference's GEMM and rounds once, so the check
is ‖out - ref‖ / ‖ref‖ (1e-5 fp32, 1e-3 fp16, 1e-2 bf16) plus an elementwise one at about 2 ulp
with an absolute floor of that norm tolerance times the output's rms (for sums that cancel).
In the interpreter, which truncates fp32 -> bf16 casts instead of rounding, the fused bf16 variants
drift further from the reference (silu, the product, the norm and the output each truncated, all
towards zero), so there they get a looser tolerance; their tighter check is against the unfused kernels.
"""

import importlib

import pytest
import torch
from kernel_check import DEVICE, DTYPES

from ember.ops.activation import silu_mul_reference, silu_mul_triton
from ember.ops.norm import rms_norm_triton
from ember.ops.linear import (
    SKINNY_MAX_M,
    ResidualStream,
    SkinnyConfig,
    linear,
    linear_add,
    linear_add_reference,
    linear_add_triton,
    linear_reference,
    linear_silu_mul,
    linear_silu_mul_reference,
    linear_silu_mul_triton,
    linear_triton,
    lm_head,
    lm_head_reference,
    lm_head_triton,
    rms_norm_linear,
    rms_norm_linear_reference,
    rms_norm_linear_triton,
    skinny_config,
)
from ember.ops.linear import fold_norm_weight

skinny = importlib.import_module("ember.ops.linear")  # the module: ember.ops.linear is the op

NORM_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
RTOL = {torch.float32: 1e-5, torch.float16: 2**-9, torch.bfloat16: 2**-6}
# Small blocks so N = 72, K = 200 span several programs, a partial column block and a partial K step.
CONFIGS = {
    "dot": SkinnyConfig(16, 64, 1, 4, 2, True),
    "dot-split": SkinnyConfig(16, 32, 4, 4, 2, True),
    "dot-x-left": SkinnyConfig(16, 64, 2, 4, 2, True, True),
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


# The interpreter truncates bf16 casts (see the module docstring): fused bf16 results drift further.
FUSED_LOOSEN = 3.0 if DEVICE == "cpu" else 1.0


def loosen_for(dtype):
    return FUSED_LOOSEN if dtype == torch.bfloat16 else 1.0


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 16])
def test_linear_silu_mul_kernel(m, dtype, config):
    # Scale 3 reaches silu's tails, where the rounding of silu before the product matters most.
    # W = [gate; up] with 72 rows each: the halved column blocks end on a partial block.
    x, w = make((m, 200), dtype, scale=3.0, seed=m), make((144, 200), dtype, scale=0.1, seed=7)
    out = linear_silu_mul_triton(x, w, config=config)
    assert out.shape == (m, 72)
    assert_gemm_close(out, linear_silu_mul_reference(x, w), loosen_for(dtype))
    # The unfused kernels round at the same points: only the GEMM's fp32 order may differ.
    assert_gemm_close(out, silu_mul_triton(linear_triton(x, w, config=config)))


def make_stream(m, dtype, config, n=72, k=200):
    """A summed residual stream with statistics, as the ADD epilogue leaves it."""
    x, w = make((m, k), dtype, seed=m), make((n, k), dtype, scale=0.1, seed=5)
    residual = make((m, n), dtype, scale=2.0, seed=50 + m)
    return linear_add_triton(x, w, residual, config=config), (x, w, residual)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 16])
def test_linear_add_kernel(m, dtype, config):
    stream, (x, w, residual) = make_stream(m, dtype, config)
    ref = linear_add_reference(x, w, residual)
    assert stream.residual is None and stream.hidden.shape == (m, 72)
    assert_gemm_close(stream.hidden, ref.hidden, loosen_for(dtype))
    # The product rounded, then the add rounded: the unfused kernel plus a torch add (which rounds
    # to nearest, as the GPU kernel does; the interpreter's bf16 cast truncates).
    unfused = linear_triton(x, w, config=config) + residual
    if dtype != torch.bfloat16 or DEVICE != "cpu":
        assert torch.equal(stream.hidden, unfused)
    # Per column block, each row's sum of squares of the stored sum; together, its row's total.
    blocks = -(-72 // config.block_n)
    assert stream.row_stats.shape == (blocks, m) and stream.row_stats.dtype == torch.float32
    torch.testing.assert_close(stream.row_stats.sum(0), stream.hidden.float().pow(2).sum(-1), rtol=1e-5, atol=0)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("silu_mul", [False, True], ids=["linear", "silu_mul"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 16])
def test_rms_norm_linear_kernel(m, dtype, silu_mul, config):
    # Hidden 72 (the stream's width): the statistics come in 72 / block_n partial sums.
    stream, _ = make_stream(m, dtype, config)
    norm_w = make((72,), dtype, seed=9) + 1.0
    w = make((80 if silu_mul else 40, 72), dtype, scale=0.1, seed=7)
    bias = None if silu_mul else make((40,), dtype, seed=8)
    w_folded, ones = w.clone(), norm_w.clone()
    fold_norm_weight(w_folded, ones)
    out, hidden = rms_norm_linear_triton(stream, ones, 1e-6, w_folded, bias, silu_mul, norm_folded=True, config=config)
    assert hidden is stream.hidden and out.shape == (m, 40)
    ref, ref_hidden = rms_norm_linear_reference(ResidualStream(stream.hidden), ones, 1e-6, w_folded, bias, silu_mul,
                                                norm_folded=True)
    assert torch.equal(ref_hidden, stream.hidden)
    # The reference rounds x / rms (the unit-weight norm, then W'), the kernel scales its fp32
    # product instead: an ulp apart in 16 bits, ~1e-7 in fp32 (where the check is tight).
    assert_gemm_close(out, ref, (1.0 if dtype == torch.float32 else 4.0) * loosen_for(dtype))
    # Against the unfolded norm kernel followed by the same GEMM (and activation): the fold moves
    # the roundings (W * g once, x / rms never), an error of the size of one rounding per term.
    normed = rms_norm_triton(stream.hidden, norm_w, 1e-6)
    unfused = silu_mul_triton(linear_triton(normed, w, config=config)) if silu_mul else \
        linear_triton(normed, w, bias, config=config)
    assert_gemm_close(out, unfused, 4.0 * loosen_for(dtype))


def test_rms_norm_linear_kernel_with_statistics_in_chunks(monkeypatch):
    """More row statistics than the kernel holds across its K loop: summed in chunks before it."""
    monkeypatch.setattr(importlib.import_module("ember.ops.skinny_gemm"), "_MAX_STAT_FLOATS", 8)
    config = CONFIGS["fma-split"]  # 4-column blocks: 18 partial sums per row, 3 rows
    stream, _ = make_stream(3, torch.float32, config)
    assert stream.row_stats.shape == (18, 3)
    w = make((40, 72), torch.float32, scale=0.1, seed=7)
    out, _ = rms_norm_linear_triton(stream, torch.ones(72), 1e-6, w, norm_folded=True, config=config)
    ref, _ = rms_norm_linear_reference(ResidualStream(stream.hidden), torch.ones(72), 1e-6, w, norm_folded=True)
    assert_gemm_close(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fold_norm_weight(dtype):
    """W <- W diag(g) rounded once, g <- 1; the folded norm's math equals the unfolded one's."""
    x, g = make((3, 200), torch.float32, seed=1), make((200,), dtype, scale=0.3, seed=2) + 1
    w = make((72, 200), dtype, seed=3)
    w_folded, g_folded = w.clone(), g.clone()
    fold_norm_weight(w_folded, g_folded, rows_per_chunk=16)  # chunks, one of them partial
    assert torch.equal(g_folded, torch.ones_like(g))
    assert torch.equal(w_folded, (w.float() * g.float()).to(dtype))
    stream = ResidualStream(x.to(dtype))
    for silu in (False, True):
        want, _ = rms_norm_linear_reference(stream, g, 1e-6, w, silu_mul=silu)
        got, _ = rms_norm_linear_reference(stream, g_folded, 1e-6, w_folded, silu_mul=silu, norm_folded=True)
        # Two rounding schemes of the same math: the elementwise bound is ~8 ulp (a silu product
        # of two rounded sums that cancel).
        assert_gemm_close(got, want, 4.0)


def test_fused_dispatch(monkeypatch):
    """Which path each fused op takes: the one-launch kernel only for a summed stream with
    statistics and a shape the table (or heuristic) gives the kernel; else the unfused kernels,
    with the residual add left to the next norm."""
    x, w = make((3, 200), torch.bfloat16), make((72, 200), torch.bfloat16, seed=1)
    residual, norm_w = make((3, 72), torch.bfloat16, seed=2), make((72,), torch.bfloat16, seed=3)
    w2 = make((40, 72), torch.bfloat16, seed=4)
    if DEVICE == "cpu":  # off CUDA: the reference path, bit for bit
        got, want = linear_add(x, w, residual), linear_add_reference(x, w, residual)
        assert got.residual is None and torch.equal(got.hidden, want.hidden)
        assert torch.equal(got.row_stats, want.row_stats)
        stream = ResidualStream(x, make((3, 200), torch.bfloat16, seed=5))
        for folded in (False, True):
            for got, want in zip(rms_norm_linear(stream, make((200,), torch.bfloat16), 1e-6, w, norm_folded=folded),
                                 rms_norm_linear_reference(stream, make((200,), torch.bfloat16), 1e-6, w,
                                                           norm_folded=folded)):
                assert torch.equal(got, want)
    launches = []

    def fake_launch(x, weight, bias, config, *, norm=None, residual=None, gate_silu=False):
        launches.append(("norm" if norm else "") + ("add" if residual is not None else "")
                        + ("silu" if gate_silu else "") or "linear")
        out = torch.zeros(x.shape[0], weight.shape[0] // (2 if gate_silu else 1), dtype=x.dtype)
        return (out, torch.zeros(1, x.shape[0])) if residual is not None else out

    monkeypatch.setattr(skinny, "use_triton", lambda t: True)
    monkeypatch.setattr(skinny, "_launch", fake_launch)
    monkeypatch.setattr(skinny, "add_rms_norm", lambda x, r, nw, eps: (x + r, x + r))
    monkeypatch.setattr(skinny, "rms_norm", lambda x, nw, eps: x)
    monkeypatch.setattr(skinny, "silu_mul", silu_mul_reference)
    stream = linear_add(x, w, residual)
    assert launches == ["add"] and stream.residual is None and stream.row_stats is not None
    rms_norm_linear(stream, norm_w, 1e-6, w2, norm_folded=True)
    rms_norm_linear(stream, norm_w, 1e-6, torch.cat([w2, w2]), silu_mul=True, norm_folded=True)
    assert launches == ["add", "norm", "normsilu"]
    # A norm whose weight is not folded into W: the norm kernel, then the projection.
    launches.clear()
    rms_norm_linear(stream, norm_w, 1e-6, w2)
    assert launches == ["linear"]
    # A pending add (the stream from a cuBLAS projection): add + norm kernel, then the projection.
    launches.clear()
    out, hidden = rms_norm_linear(ResidualStream(residual, residual), norm_w, 1e-6, w2, norm_folded=True)
    assert launches == ["linear"] and torch.equal(hidden, residual + residual)
    # No statistics (the first layer): the norm kernel, then the projection (with its activation).
    launches.clear()
    rms_norm_linear(ResidualStream(residual), norm_w, 1e-6, torch.cat([w2, w2]), silu_mul=True, norm_folded=True)
    assert launches == ["silu"]
    # A shape the table hands to cuBLAS: every op falls back, the add left pending.
    launches.clear()
    for key in [("linear", 72, 200, 4), ("linear", 40, 72, 4), ("linear", 80, 72, 4)]:
        monkeypatch.setitem(skinny.SKINNY_TABLE, key, None)
    stream = linear_add(x, w, residual)
    assert stream.residual is residual and stream.row_stats is None
    out, hidden = rms_norm_linear(stream, norm_w, 1e-6, torch.cat([w2, w2]), silu_mul=True, norm_folded=True)
    assert launches == [] and out.shape == (3, 40)
    # An op's own table entry overrides the shape's "linear" entry.
    monkeypatch.setitem(skinny.SKINNY_TABLE, ("linear_add", 72, 200, 4), (16, 64, 1, 4, 2, True))
    assert skinny_config(3, 72, 200, "linear_add") == SkinnyConfig(16, 64, 1, 4, 2, True)
    assert skinny_config(3, 72, 200, "linear") is None


def test_dispatcher_uses_the_reference_off_cuda():
    x, w = make((3, 200), torch.bfloat16), make((72, 200), torch.bfloat16, seed=1)
    if DEVICE == "cpu":
        assert torch.equal(linear(x, w), linear_reference(x, w))
        assert torch.equal(linear_silu_mul(x, w), linear_silu_mul_reference(x, w))


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
    assert linear_silu_mul(make((1, 200), torch.bfloat16), w) == "kernel"
    for x, weight in [
        (make((SKINNY_MAX_M + 1, 200), torch.bfloat16), w),  # prefill-sized
        (make((4, 200), torch.float32), w.float()),  # fp32 models keep cuBLAS
        (make((4, 200), torch.bfloat16).t().contiguous().t(), w),  # not contiguous
    ]:
        assert torch.equal(linear(x, weight), linear_reference(x, weight))
    x33 = make((SKINNY_MAX_M + 1, 200), torch.bfloat16)
    assert torch.equal(linear_silu_mul(x33, w), linear_silu_mul_reference(x33, w))
    assert launches == [(skinny._HEURISTIC_MAX_M, 200), (SKINNY_MAX_M, 200), (1, 200)]
    # A table entry of None hands the shape back to cuBLAS.
    monkeypatch.setitem(skinny.SKINNY_TABLE, ("linear", 72, 200, 4), None)
    x = make((3, 200), torch.bfloat16)
    assert torch.equal(linear(x, w), linear_reference(x, w))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lm_head_kernel_into_out(dtype):
    # The decode graph's LM head writes into the graph's fixed logits buffer.
    x, w = make((1, 200), dtype), make((72, 200), dtype, scale=0.1, seed=1)
    logits = torch.full((4, 72), 5.0, dtype=dtype, device=DEVICE)
    out = lm_head_triton(x, w, out=logits[:1], config=CONFIGS["dot"])
    assert out.data_ptr() == logits.data_ptr() and (logits[1:] == 5.0).all()
    assert_gemm_close(logits[:1], lm_head_reference(x, w))
    assert torch.equal(lm_head_reference(x, w, out=torch.empty_like(logits[:1])), lm_head_reference(x, w))


def test_lm_head_dispatch_runs_only_measured_shapes(monkeypatch):
    """The kernel only for an "lm_head" table entry of the shape and M bucket; never the heuristic."""
    launches = []
    monkeypatch.setattr(skinny, "use_triton", lambda t: True)
    monkeypatch.setattr(skinny, "_launch", lambda *args, **kw: launches.append((args[0].shape, kw["out"])) or "kernel")
    w = make((72, 200), torch.bfloat16, seed=1)
    x1, x2 = make((1, 200), torch.bfloat16), make((2, 200), torch.bfloat16)
    assert torch.equal(lm_head(x1, w), lm_head_reference(x1, w))  # no entry: cuBLAS, not the heuristic
    monkeypatch.setitem(skinny.SKINNY_TABLE, ("linear", 72, 200, 1), (16, 64, 1, 4, 2, True))
    assert torch.equal(lm_head(x1, w), lm_head_reference(x1, w))  # nor the shape's "linear" entry
    monkeypatch.setitem(skinny.SKINNY_TABLE, ("lm_head", 72, 200, 1), (16, 64, 1, 4, 2, True))
    out = torch.empty(1, 72, dtype=torch.bfloat16, device=DEVICE)
    assert lm_head(x1, w, out=out) == "kernel" and launches == [((1, 200), out)]
    assert torch.equal(lm_head(x2, w), lm_head_reference(x2, w))  # M bucket 2 has no entry
    assert torch.equal(lm_head(x1.float(), w.float()), lm_head_reference(x1.float(), w.float()))  # fp32: cuBLAS


# ------------------------------------------------------------------------------------------ GPU
GPU_SHAPES = [(4096, 1024), (1024, 3072), (1024, 2048), (6144, 4096), (4096, 4096)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", GPU_SHAPES)
@pytest.mark.parametrize("m", [1, 4, 16, 32])
def test_gpu_real_shapes(m, n, k, dtype):
    x, w = make((m, k), dtype, "cuda", seed=m), make((n, k), dtype, "cuda", scale=0.02, seed=1)
    assert_gemm_close(linear(x, w), linear_reference(x, w))
    split_configs = [SkinnyConfig(32, 256, 4, 4, 4, True), SkinnyConfig(4, 128, 2, 4, 1, False)]
    for config in split_configs:
        assert_gemm_close(linear_triton(x, w, config=config), linear_reference(x, w))
    # The fused forms, through the dispatcher and with split configs: the stream, its statistics,
    # the folded norm and the silu epilogue (W = [gate; up] of n // 2 rows each).
    residual = make((m, n), dtype, "cuda", seed=3)
    norm_w = make((n,), dtype, "cuda", scale=0.2, seed=4) + 1
    w_next = make((256, n), dtype, "cuda", scale=0.02, seed=6)
    fold_norm_weight(w_next, norm_w)
    ref_stream = linear_add_reference(x, w, residual)
    for config in [None, *split_configs]:
        stream = linear_add(x, w, residual) if config is None else linear_add_triton(x, w, residual, config=config)
        if stream.residual is not None:  # the dispatcher left the add pending (a cuBLAS shape)
            stream = linear_add_triton(x, w, residual)
        if config is not None:  # the product rounded as linear_triton's, then one rounded add
            assert torch.equal(stream.hidden, linear_triton(x, w, config=config) + residual)
        # Against cuBLAS's product: a last-bit difference in it survives the add's cancellation
        # as a large relative one (fp16, a sum near 0), so the bound is absolute, from the rms.
        assert_gemm_close(stream.hidden, ref_stream.hidden, 4.0)
        torch.testing.assert_close(stream.row_stats.sum(0), stream.hidden.float().pow(2).sum(-1), rtol=1e-4, atol=0)
        for silu in (False, True):
            ref, _ = rms_norm_linear_reference(ResidualStream(stream.hidden), norm_w, 1e-6, w_next, silu_mul=silu,
                                               norm_folded=True)
            out, hidden = (rms_norm_linear(stream, norm_w, 1e-6, w_next, silu_mul=silu, norm_folded=True)
                           if config is None else
                           rms_norm_linear_triton(stream, norm_w, 1e-6, w_next, silu_mul=silu, norm_folded=True,
                                                  config=config))
            assert hidden is stream.hidden
            # (The dispatcher may take the unfused path, which rounds x / rms: ~2 ulp more.)
            assert_gemm_close(out, ref, 4.0)
    assert_gemm_close(linear_silu_mul(x, w), linear_silu_mul_reference(x, w))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("config", [None, SkinnyConfig(16, 256, 4, 4, 4, True)], ids=["policy", "split-k"])
def test_gpu_cuda_graph_capture(config):
    m, n, k = 4, 1024, 3072
    x, w = make((m, k), torch.bfloat16, "cuda"), make((n, k), torch.bfloat16, "cuda", scale=0.02, seed=1)
    residual = make((m, n), torch.bfloat16, "cuda", seed=2)
    norm_w = make((n,), torch.bfloat16, "cuda", scale=0.2, seed=4) + 1
    w_gate_up = make((2 * k, n), torch.bfloat16, "cuda", scale=0.02, seed=3)
    fold_norm_weight(w_gate_up, norm_w)

    def step():  # -> (x W^T, silu·mul of the normed stream's gate_up, the summed stream)
        # The policy may leave the add pending (the table's fallback at this shape): the summed
        # stream is then rms_norm_linear's second output, as it is after a fused add.
        if config is None:
            stream = linear_add(x, w, residual)
            return (linear(x, w), *rms_norm_linear(stream, norm_w, 1e-6, w_gate_up, silu_mul=True, norm_folded=True))
        stream = linear_add_triton(x, w, residual, config=config)
        return (linear_triton(x, w, config=config),
                *rms_norm_linear_triton(stream, norm_w, 1e-6, w_gate_up, silu_mul=True, norm_folded=True,
                                        config=config))

    step()  # compile and create the split-K workspace outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, act, hidden = step()
    for seed in (10, 11):  # new inputs, same addresses: the replay must see them
        x.copy_(make((m, k), torch.bfloat16, "cuda", seed=seed))
        residual.copy_(make((m, n), torch.bfloat16, "cuda", seed=seed + 5))
        graph.replay()
        torch.cuda.synchronize()
        assert_gemm_close(out, linear_reference(x, w))
        ref_stream = linear_add_reference(x, w, residual)
        assert_gemm_close(hidden, ref_stream.hidden)
        ref_act, _ = rms_norm_linear_reference(ref_stream, norm_w, 1e-6, w_gate_up, silu_mul=True, norm_folded=True)
        assert_gemm_close(act, ref_act, 4.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("k", [1024, 4096])  # Qwen3-0.6B and -8B against the 151,936-token vocabulary
def test_gpu_lm_head_real_shapes(k):
    x, w = make((1, k), torch.bfloat16, "cuda"), make((151936, k), torch.bfloat16, "cuda", scale=0.02, seed=1)
    assert skinny._config(x, w, None, "lm_head") is not None  # the table's entry runs
    out = torch.empty(2, 151936, dtype=torch.bfloat16, device="cuda")
    lm_head(x, w, out=out[:1])
    assert_gemm_close(out[:1], lm_head_reference(x, w))
