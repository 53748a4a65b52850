"""Skinny GEMM for decode projections: ``y = x W^T (+ b)`` with few rows, in one launch.

``linear(x, weight, bias=None)``: x [M, K], weight [N, K] (row-major) -> [M, N] in x's dtype.
``silu_mul_linear(gate_up, weight)``: ``linear(silu_mul(gate_up), weight)`` with the activation
computed while x is loaded, rounded as ``ops.silu_mul`` rounds (silu, then the product, each to
the dtype), so the MLP's down projection needs no separate kernel nor intermediate tensor.

``add_rms_norm_linear(x, residual, norm_weight, eps, weight)``: the decoder layer's
``rms_norm(x + residual) W^T`` with the norm computed while x is loaded (NORM prologue); it
returns ``(y, x + residual)``, so the residual add and the norm need no kernel of their own.

At decode (M <= 32) a projection is a read of its weight: the time to beat is weight bytes over
the copy rate. cuBLAS tiles are made for larger M and miss it badly at some Qwen3 shapes (the
0.6B o projection runs at 8% of the copy rate on an H200), or split K over a second reduce launch.
Here a program owns BLOCK_N output columns for all M rows and streams its rows of W through a
num_stages-deep pipeline, accumulating in fp32:
    acc[BLOCK_N, BLOCK_M] += W[n-block, k-block] @ x[:, k-block]^T
DOT runs the product on tensor cores with x padded to 16 rows (free: the kernel waits on memory);
otherwise CUDA-core FMAs over x's real rows. When N alone gives too few programs to keep every SM
loading, SPLIT_K programs share a column block: each stores its fp32 partial in a persistent
workspace, and the last to arrive (an atomic counter per block, which it resets to 0) sums them
in a fixed order and writes the output. Still one launch, deterministic and CUDA-graph safe;
the workspace is per device, so launches sharing it must not run concurrently (Ember uses one
stream per device).

Tuning lives in ``skinny_config`` only: the table that benchmarks/gemv_sweep.py prints, and a
shape heuristic for what the table lacks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ember.ops.activation import silu_mul
from ember.ops.dispatch import l2_prefetch, pdl_enabled, pdl_sync, use_triton
from ember.ops.norm import add_rms_norm, rms_norm
from ember.ops.skinny_table import SKINNY_TABLE

SKINNY_MAX_M = 32  # rows up to which the dispatcher considers the kernel at all
_HEURISTIC_MAX_M = 16  # beyond this only measured table entries run the kernel (its guesses lost to cuBLAS)
_MAX_BLOCK_M = 64  # linear_triton's limit: beyond this the padded tiles stop fitting registers
_TARGET_PROGRAMS = 256  # about two per SM on a 132-SM H100/H200
_WORKSPACE_FLOATS = 1 << 21  # split-K partials per device (8 MiB); larger needs run unsplit
_MAX_COUNTERS = 1 << 13


class SkinnyConfig(NamedTuple):
    block_n: int  # output columns (rows of W) per program
    block_k: int
    split_k: int  # programs sharing one column block's K
    num_warps: int
    num_stages: int
    dot: bool  # tensor cores (x padded to 16 rows) or CUDA-core FMAs


# The measured per-shape table lives beside this file (ops/skinny_table.py); shapes it lacks use
# the heuristic below.


def _heuristic_config(m: int, n: int, k: int, op: str) -> SkinnyConfig:
    if op == "silu_mul_linear":
        # Every column block recomputes silu over its x tiles (16 rows, padding included: an exp
        # and a divide each, on the SFUs): wide blocks cut that redundancy, split K restores the
        # parallelism.
        block_n = 64 if n >= 4096 else 32
    else:
        # Wide blocks read x fewer times, but never at the cost of leaving SMs without work.
        block_n = next((b for b in (64, 32) if triton.cdiv(n, b) >= _TARGET_PROGRAMS), 16)
    # 4 stages of a (block_n + 16) x block_k bf16 tile: 48-96 KiB of shared memory on sm_90,
    # so 2-4 programs fit on an SM.
    block_k = 128 if block_n == 64 else 256
    # Split K until the GPU is full, keeping >= 512 columns per split and every split whole.
    split_k = 1
    while (triton.cdiv(n, block_n) * split_k < _TARGET_PROGRAMS and split_k < 8
           and k % (2 * split_k * block_k) == 0 and k // (2 * split_k) >= 512):
        split_k *= 2
    return SkinnyConfig(block_n, block_k, split_k, 4, 4, True)


def skinny_config(m: int, n: int, k: int, op: str = "linear") -> SkinnyConfig | None:
    """The kernel config for an [m, k] x [n, k]^T product, or None for the fallback: cuBLAS for
    ``op="linear"``, ops.silu_mul then ops.linear for ``op="silu_mul_linear"``, the norm kernel
    then ops.linear for ``op="add_rms_norm_linear"``."""
    if not 1 <= m <= SKINNY_MAX_M:
        return None
    key = (op, n, k, triton.next_power_of_2(m))
    if key in SKINNY_TABLE:
        entry = SKINNY_TABLE[key]
        return None if entry is None else SkinnyConfig(*entry)
    if op == "add_rms_norm_linear":  # its statistics pass often costs more than it saves: measured only
        return None
    return _heuristic_config(m, n, k, op) if m <= _HEURISTIC_MAX_M else None


# ---------------------------------------------------------------------------------------- kernel
@triton.jit
def _store_output(acc, out_ptr, bias_ptr, offs_n, offs_m, M, N, stride_om, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[:, None]
    mask = (offs_n[:, None] < N) & (offs_m[None, :] < M)
    tl.store(out_ptr + offs_m[None, :] * stride_om + offs_n[:, None], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _norm_prologue_input(x_ptrs, res_ptrs, norm_w_ptr, cols, mask, K, rstd, dtype: tl.constexpr,
                         NORM: tl.constexpr):
    """The GEMM input tile rms_norm(x [+ residual]) at ``cols``, rounded as ops.norm rounds it."""
    s = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    if NORM == 2:  # the sum is rounded to the dtype first, as add_rms_norm stores it
        s = (s + tl.load(res_ptrs, mask=mask, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
    h = (s * rstd[:, None]).to(dtype).to(tl.float32)
    w = tl.load(norm_w_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
    return (w[None, :] * h).to(dtype)


@triton.jit(do_not_specialize=["M"])
def _skinny_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, ws_ptr, counter_ptr, res_ptr, norm_w_ptr, res_out_ptr, eps,
                   M, N, K, k_per_split, stride_xm, stride_wn, stride_om,
                   HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr, NORM: tl.constexpr, DOT: tl.constexpr,
                   UPCAST_DOT: tl.constexpr, EVEN_K: tl.constexpr, SPLIT_K: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NORM_ROWS: tl.constexpr,
                   NORM_CHUNK: tl.constexpr,
                   USE_PDL: tl.constexpr, PREFETCH_LINES: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    dtype = out_ptr.dtype.element_ty
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = (offs_m < M)[:, None]
    # Columns past N re-read row N-1, so W loads need no mask along N; they are never stored.
    w_rows = w_ptr + tl.minimum(offs_n, N - 1).to(tl.int64)[:, None] * stride_wn
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    if USE_PDL:
        # Weights are never written by the kernels of a step, so while the previous kernel may
        # still run, ask L2 for the W columns the pipeline loads first: PREFETCH_LINES 128-byte
        # lines of each of this program's rows (clamped to its split). Nothing else is touched
        # before the wait: x, the workspace and the counters follow earlier kernels (ops/dispatch.py).
        line = 1024 // w_ptr.dtype.element_ty.primitive_bitwidth  # elements per 128 bytes
        prefetch_cols = tl.minimum(k_start + tl.arange(0, PREFETCH_LINES) * line, k_end - 1)
        l2_prefetch(w_rows + prefetch_cols[None, :])
        pdl_sync()
    if NORM > 0:
        # NORM 1: x = rms_norm(x); 2: x = rms_norm(x + residual), and program (0, 0) stores the
        # sum. The row statistics need all K columns, whatever this program's split: x is a few
        # KiB per row, read from L2 by every program, against the MiBs of W. Only the real rows
        # (NORM_ROWS, not the 16 a tensor-core tile pads to) are read, in chunks of about 4096
        # elements: one step for a batch-1 row.
        rows_n = tl.arange(0, NORM_ROWS)
        sum_sq = tl.zeros((NORM_ROWS, NORM_CHUNK), dtype=tl.float32)
        writer = (pid_n == 0) & (pid_k == 0)
        for k in range(0, K, NORM_CHUNK):
            cols = k + tl.arange(0, NORM_CHUNK)
            mask = (rows_n < M)[:, None] & (cols < K)[None, :]
            ptrs = rows_n[:, None] * stride_xm + cols[None, :]
            s = tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
            if NORM == 2:
                s = (s + tl.load(res_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)).to(dtype)
                tl.store(res_out_ptr + ptrs, s, mask=mask & writer)
                s = s.to(tl.float32)
            sum_sq += s * s
        rstd_n = tl.math.rsqrt(tl.sum(sum_sq, axis=1) / K + eps)
        if NORM_ROWS == BLOCK_M:
            rstd = rstd_n
        else:  # spread over the padded rows (rstd 0 there: their x is 0 anyway)
            rstd = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for r in tl.static_range(NORM_ROWS):
                rstd = tl.where(offs_m == r, tl.sum(tl.where(rows_n == r, rstd_n, 0.0), axis=0), rstd)
    if DOT:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:  # per-lane partial sums, reduced once after the loop rather than every step
        acc3 = tl.zeros((BLOCK_N, BLOCK_M, BLOCK_K), dtype=tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        cols = k + offs_k
        if EVEN_K:
            w = tl.load(w_rows + cols[None, :])
            x_mask = m_mask
        else:
            w = tl.load(w_rows + cols[None, :], mask=(cols < k_end)[None, :], other=0.0)
            x_mask = m_mask & (cols < k_end)[None, :]
        if NORM > 0:
            x = _norm_prologue_input(x_rows + cols[None, :], res_ptr + offs_m[:, None] * stride_xm + cols[None, :],
                                     norm_w_ptr, cols, x_mask, K, rstd, dtype, NORM)
        elif SILU_MUL:  # x = silu(gate) * up, gate_up = [gate | up] with K columns each
            gate = tl.load(x_rows + cols[None, :], mask=x_mask, other=0.0).to(tl.float32)
            up = tl.load(x_rows + K + cols[None, :], mask=x_mask, other=0.0).to(tl.float32)
            act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)  # as ops.silu_mul rounds
            x = (act * up).to(dtype)
        else:
            x = tl.load(x_rows + cols[None, :], mask=x_mask, other=0.0)
        if DOT:
            if UPCAST_DOT:  # the interpreter's bf16 dot is broken; GPUs keep 16-bit operands
                w = w.to(tl.float32)
                x = x.to(tl.float32)
            # "ieee" only matters for fp32 operands: keeps them exact instead of tf32.
            acc = tl.dot(w, tl.trans(x), acc, input_precision="ieee")
        else:
            acc3 += w.to(tl.float32)[:, None, :] * x.to(tl.float32)[None, :, :]
    if not DOT:
        acc = tl.sum(acc3, axis=2)

    if SPLIT_K == 1:
        _store_output(acc, out_ptr, bias_ptr, offs_n, offs_m, M, N, stride_om, HAS_BIAS)
    else:
        tile = tl.arange(0, BLOCK_N)[:, None] * BLOCK_M + offs_m[None, :]
        block_ws = ws_ptr + pid_n.to(tl.int64) * (SPLIT_K * BLOCK_N * BLOCK_M)
        tl.store(block_ws + pid_k * (BLOCK_N * BLOCK_M) + tile, acc, cache_modifier=".cg")  # to L2
        # Ordering (as in ops/decode_attention.py's split kernel): stores of all threads -> bar.sync ->
        # one thread's atom.acq_rel.gpu releases them; the last arrival's acquire -> bar.sync ->
        # its loads, which go to L2 (.cg), so no stale L1 line can be read.
        tl.debug_barrier()
        arrived = tl.atomic_add(counter_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:  # last of the block: sum the partials in split order
            tl.debug_barrier()  # all threads' loads after the (one-thread) acquire above
            total = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(block_ws + s * (BLOCK_N * BLOCK_M) + tile, cache_modifier=".cg")
            tl.store(counter_ptr + pid_n, 0)  # ready for the next launch
            _store_output(total, out_ptr, bias_ptr, offs_n, offs_m, M, N, stride_om, HAS_BIAS)


# ---------------------------------------------------------------------------------------- launch
_workspaces: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _split_k_workspace(device: torch.device, floats: int, counters: int):
    """This device's (fp32 partials, zeroed int32 counters), or None if the launch can't use them."""
    if floats > _WORKSPACE_FLOATS or counters > _MAX_COUNTERS:
        return None
    if device not in _workspaces:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None  # allocated now, it would belong to the graph's pool: run unsplit instead
        _workspaces[device] = (torch.empty(_WORKSPACE_FLOATS, dtype=torch.float32, device=device),
                               torch.zeros(_MAX_COUNTERS, dtype=torch.int32, device=device))
    return _workspaces[device]


def _launch(x, weight, bias, k, config: SkinnyConfig | None, op: str, norm=None):
    """One skinny-GEMM launch of ``op``; ``norm`` = (residual or None, norm_weight, eps) for the
    NORM prologue, which then also returns the residual sum (x itself without a residual)."""
    m, n = x.shape[0], weight.shape[0]
    assert x.dim() == 2 and x.stride(1) == 1 and weight.stride(1) == 1 and weight.shape[1] == k > 0
    assert m <= _MAX_BLOCK_M, f"skinny GEMM is for at most {_MAX_BLOCK_M} rows, got {m}"
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    residual, norm_weight, eps = norm if norm is not None else (None, out, 0.0)
    res_out = x if norm is not None and residual is None else None
    if residual is not None:
        assert residual.shape == x.shape and residual.stride() == x.stride() and residual.dtype == x.dtype
        res_out = torch.empty_like(x)
    if m == 0:
        return out if norm is None else (out, res_out)
    cfg = config or skinny_config(m, n, k, op) or _heuristic_config(m, n, k, op)
    block_m = max(16, triton.next_power_of_2(m)) if cfg.dot else triton.next_power_of_2(m)
    num_blocks = triton.cdiv(n, cfg.block_n)
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    split_k = triton.cdiv(k, k_per_split)  # rounding K up to blocks can leave trailing splits empty
    ws = counters = out  # placeholders, unread unless split
    if split_k > 1:
        workspace = _split_k_workspace(x.device, split_k * num_blocks * cfg.block_n * block_m, num_blocks)
        if workspace is None:
            split_k = 1
        else:
            ws, counters = workspace
    if split_k == 1:
        k_per_split = k
    use_pdl = pdl_enabled(x.device)
    # With PDL, the first num_stages W tiles of each program go to L2 before the wait.
    # (Prefetching more, up to 16-48 MiB of W per launch, measured no faster at 0.6B and slower
    # at 8B: benchmarks/NOTES.md, session 4.)
    prefetch_lines = triton.next_power_of_2(triton.cdiv(min(k_per_split, cfg.num_stages * cfg.block_k)
                                                        * weight.element_size(), 128))
    norm_mode = 0 if norm is None else (1 if residual is None else 2)
    # The norm's statistics pass: about 4096 elements of x (and residual) per step, in registers.
    norm_rows = triton.next_power_of_2(m)
    norm_chunk = min(triton.next_power_of_2(k), max(64, 4096 // norm_rows))
    _skinny_kernel[(num_blocks, split_k)](
        x, weight, out if bias is None else bias, out, ws, counters,
        out if residual is None else residual, norm_weight, out if residual is None else res_out, eps,
        m, n, k, k_per_split, x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, SILU_MUL=op == "silu_mul_linear", NORM=norm_mode, DOT=cfg.dot,
        UPCAST_DOT=not x.is_cuda, EVEN_K=k_per_split % cfg.block_k == 0 and k % k_per_split == 0, SPLIT_K=split_k,
        BLOCK_M=block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, NORM_ROWS=norm_rows, NORM_CHUNK=norm_chunk,
        USE_PDL=use_pdl, PREFETCH_LINES=prefetch_lines if use_pdl else 1,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=use_pdl,
        enable_fp_fusion=False,  # as every Ember kernel: products round on their own
    )
    return out if norm is None else (out, res_out)


# ---------------------------------------------------------------------------------------- ops
def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  config: SkinnyConfig | None = None) -> torch.Tensor:
    return _launch(x, weight, bias, x.shape[1], config, op="linear")


def silu_mul_linear_reference(gate_up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, weight)  # silu and the product each round to the dtype


def silu_mul_linear_triton(gate_up: torch.Tensor, weight: torch.Tensor,
                           config: SkinnyConfig | None = None) -> torch.Tensor:
    assert gate_up.shape[-1] == 2 * weight.shape[1], (gate_up.shape, weight.shape)
    return _launch(gate_up, weight, None, weight.shape[1], config, op="silu_mul_linear")


def add_rms_norm_linear_reference(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor,
                                  eps: float, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """``(rms_norm(x + residual) W^T + b, x + residual)``; without a residual, of x alone."""
    if residual is None:
        return F.linear(rms_norm(x, norm_weight, eps), weight, bias), x
    normed, residual = add_rms_norm(x, residual, norm_weight, eps)
    return F.linear(normed, weight, bias), residual


def add_rms_norm_linear_triton(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor,
                               eps: float, weight: torch.Tensor, bias: torch.Tensor | None = None,
                               config: SkinnyConfig | None = None):
    assert norm_weight.shape == (x.shape[1],) and norm_weight.dtype == x.dtype and norm_weight.is_contiguous()
    return _launch(x, weight, bias, x.shape[1], config, op="add_rms_norm_linear",
                   norm=(residual, norm_weight, eps))


def _skinny_eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (use_triton(x) and x.dim() == 2 and x.is_contiguous() and 1 <= x.shape[0] <= SKINNY_MAX_M
            and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype
            and weight.device == x.device and weight.dim() == 2 and weight.stride(1) == 1
            and weight.shape[1] > 0 and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous())))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if _skinny_eligible(x, weight, bias) and x.shape[1] == weight.shape[1]:
        config = skinny_config(x.shape[0], weight.shape[0], weight.shape[1])
        if config is not None:
            return _launch(x, weight, bias, x.shape[1], config, op="linear")
    return F.linear(x, weight, bias)


def silu_mul_linear(gate_up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if _skinny_eligible(gate_up, weight, None) and gate_up.shape[1] == 2 * weight.shape[1]:
        config = skinny_config(gate_up.shape[0], weight.shape[0], weight.shape[1], op="silu_mul_linear")
        if config is not None:
            return _launch(gate_up, weight, None, weight.shape[1], config, op="silu_mul_linear")
    return linear(silu_mul(gate_up), weight)


def add_rms_norm_linear(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                        weight: torch.Tensor, bias: torch.Tensor | None = None):
    """``(rms_norm(x + residual) W^T + b, x + residual)`` (without a residual: of x, and x): one
    skinny-GEMM launch at decode where that shape's table entry says so, else the norm kernel
    (ops.norm) and then ops.linear."""
    if (_skinny_eligible(x, weight, bias) and x.shape[1] == weight.shape[1] and norm_weight.dtype == x.dtype
            and (residual is None or (residual.is_contiguous() and residual.shape == x.shape
                                      and residual.dtype == x.dtype))):
        config = skinny_config(x.shape[0], weight.shape[0], weight.shape[1], op="add_rms_norm_linear")
        if config is not None:
            return _launch(x, weight, bias, x.shape[1], config, op="add_rms_norm_linear",
                           norm=(residual, norm_weight.contiguous(), eps))
    if residual is None:
        return linear(rms_norm(x, norm_weight, eps), weight, bias), x
    normed, residual = add_rms_norm(x, residual, norm_weight, eps)
    return linear(normed, weight, bias), residual
