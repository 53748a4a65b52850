"""The skinny GEMM kernel behind ``ops.linear`` and its fused forms (see ops/linear.py).

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

What rides along: NORM (RMSNorm of x whose weight was folded into W's columns, so that
rms_norm(x) W^T = rstd * (x W'^T): the K loop is the plain product, and each row's 1 / rms, from
its producer's row statistics, scales the accumulator in the epilogue), and in the epilogue
GATE_SILU (silu(gate) * up: each program owns the same columns of both halves of W = [gate; up])
and ADD (the residual add, then each row's sum of squares over the block's columns, stored for
the next NORM).

Tuning lives in ``skinny_config`` only: the table that benchmarks/gemv_sweep.py prints, and a
shape heuristic for what the table lacks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ember.ops.dispatch import l2_prefetch, pdl_enabled, pdl_sync
from ember.ops.skinny_table import SKINNY_TABLE

SKINNY_MAX_M = 32  # rows up to which the dispatcher considers the kernel at all
_HEURISTIC_MAX_M = 16  # beyond this only measured table entries run the kernel (its guesses lost to cuBLAS)
_MAX_BLOCK_M = 64  # linear_triton's limit: beyond this the padded tiles stop fitting registers
_TARGET_PROGRAMS = 256  # about two per SM on a 132-SM H100/H200
_WORKSPACE_FLOATS = 1 << 21  # split-K partials per device (8 MiB); larger needs run unsplit
_MAX_COUNTERS = 1 << 13


class SkinnyConfig(NamedTuple):
    block_n: int  # rows of W per program (with GATE_SILU, half of them gate rows, half up rows)
    block_k: int
    split_k: int  # programs sharing one column block's K
    num_warps: int
    num_stages: int
    dot: bool  # tensor cores (x padded to 16 rows) or CUDA-core FMAs
    # With dot: x as the product's left operand (acc^T = x W^T). On sm_90 a 64-row W tile on the
    # left makes it a wgmma whose right operand (x) must sit in shared memory, which costs an x
    # round trip through it every K step if x were computed in registers (session 5's norm
    # prologue did that); with x on the left, M < 64 rows make it an mma that reads both
    # operands from registers.
    x_left: bool = False


# What rides along with the product (see the module docstring); each table key names one.
# ("lm_head": measured entries only, see skinny_config.)
OPS = ("linear", "linear_add", "rms_norm_linear", "gate_silu", "rms_norm_gate_silu", "lm_head")


def _heuristic_config(m: int, n: int, k: int) -> SkinnyConfig:
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
    """The kernel config for ``op`` on an [m, k] x [n, k]^T product (n = rows of W), or None for
    the unfused fallback. The table's entry for ``op`` if it has one, else (for the norm-scaled
    gate_silu) its "gate_silu" entry, else its "linear" entry for the shape (what rides along adds
    little to a weight read), else, up to _HEURISTIC_MAX_M rows, the shape heuristic. "lm_head"
    runs only where it has an entry of its own (neither fallback was tried at 152k columns)."""
    assert op in OPS, op
    if not 1 <= m <= SKINNY_MAX_M:
        return None
    bucket = triton.next_power_of_2(m)
    ops = {"rms_norm_gate_silu": (op, "gate_silu", "linear"), "lm_head": (op,)}.get(op, (op, "linear"))
    for key in ((o, n, k, bucket) for o in ops):
        if key in SKINNY_TABLE:
            entry = SKINNY_TABLE[key]
            return None if entry is None else SkinnyConfig(*entry)
    return _heuristic_config(m, n, k) if m <= _HEURISTIC_MAX_M and op != "lm_head" else None


# ---------------------------------------------------------------------------------------- kernel
@triton.jit
def _weight_product(acc, w_rows, cols, k_end, x, EVEN_K: tl.constexpr, DOT: tl.constexpr,
                    UPCAST_DOT: tl.constexpr, X_LEFT: tl.constexpr):
    """acc += W[rows, cols] x[:, cols]^T: acc [BLOCK_N, BLOCK_M] with DOT, else per-lane partial
    sums [BLOCK_N, BLOCK_M, BLOCK_K], reduced once after the loop rather than every step."""
    if EVEN_K:
        w = tl.load(w_rows + cols[None, :])
    else:
        w = tl.load(w_rows + cols[None, :], mask=(cols < k_end)[None, :], other=0.0)
    if DOT:
        if UPCAST_DOT:  # the interpreter's bf16 dot is broken; GPUs keep 16-bit operands
            w = w.to(tl.float32)
            x = x.to(tl.float32)
        # "ieee" only matters for fp32 operands: keeps them exact instead of tf32.
        if X_LEFT:  # acc is [BLOCK_M, BLOCK_N] here
            acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(w, tl.trans(x), acc, input_precision="ieee")
    else:
        acc += w.to(tl.float32)[:, None, :] * x.to(tl.float32)[None, :, :]
    return acc


@triton.jit
def _epilogue(acc, acc_up, rstd, out_ptr, bias_ptr, res_ptr, stats_ptr, pid_n, offs_n, offs_m, M, N, stride_om,
              NORM: tl.constexpr, HAS_BIAS: tl.constexpr, ADD: tl.constexpr, GATE_SILU: tl.constexpr):
    """Store the fp32 product rounded to the dtype, after what rides along: each row's 1 / rms
    (NORM: it scales the fp32 product before any rounding, the folded norm's only rounding point);
    then, each step rounded as the unfused ops round, the bias; silu(gate) * up (GATE_SILU, as
    ops.silu_mul); the residual add (ADD), whose rows' sums of squares over this block's columns
    go to stats[pid_n]."""
    dtype = out_ptr.dtype.element_ty
    mask = (offs_n[:, None] < N) & (offs_m[None, :] < M)
    if NORM:
        acc = acc * rstd[None, :]
        acc_up = acc_up * rstd[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[:, None]
    y = acc.to(dtype)
    if GATE_SILU:
        gate = y.to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        y = (act * acc_up.to(dtype).to(tl.float32)).to(dtype)
    offs = offs_m[None, :] * stride_om + offs_n[:, None]
    if ADD:
        y = (y.to(tl.float32) + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(dtype)
        s = tl.where(mask, y.to(tl.float32), 0.0)
        tl.store(stats_ptr + pid_n * M + offs_m, tl.sum(s * s, axis=0), mask=offs_m < M)
    tl.store(out_ptr + offs, y, mask=mask)


@triton.jit(do_not_specialize=["M"])
def _skinny_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, ws_ptr, counter_ptr, stats_in_ptr, res_ptr,
                   stats_out_ptr, eps, M, N, K, k_per_split, num_stat_blocks, w_up_offset,
                   stride_xm, stride_wn, stride_om,
                   HAS_BIAS: tl.constexpr, NORM: tl.constexpr, ADD: tl.constexpr, GATE_SILU: tl.constexpr,
                   DOT: tl.constexpr, X_LEFT: tl.constexpr, UPCAST_DOT: tl.constexpr, EVEN_K: tl.constexpr,
                   SPLIT_K: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   NORM_ROWS: tl.constexpr, STAT_CHUNK: tl.constexpr, STATS_HELD: tl.constexpr,
                   USE_PDL: tl.constexpr, PREFETCH_LINES: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = (offs_m < M)[:, None]
    # Columns past N re-read row N-1, so W loads need no mask along N; they are never stored.
    # GATE_SILU: W = [gate; up], N rows each; a program's up rows sit w_up_offset past its gate rows.
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
        if GATE_SILU:
            l2_prefetch(w_rows + w_up_offset + prefetch_cols[None, :])
        pdl_sync()
    if NORM:
        # The producer's per-block sums of squares of each real row (not the 16 a tensor-core tile
        # pads to): a few hundred bytes from L2, loaded now and reduced after the K loop, so the
        # round trip hides behind the weight stream instead of delaying its first tile.
        # (Too many to hold across the loop, as with 32 rows of 4-column blocks: summed in chunks now.)
        rows_n = tl.arange(0, NORM_ROWS)
        if STATS_HELD:
            blocks = tl.arange(0, STAT_CHUNK)
            sum_sq = tl.load(stats_in_ptr + blocks[:, None] * M + rows_n[None, :],
                             mask=(blocks < num_stat_blocks)[:, None] & (rows_n < M)[None, :], other=0.0)
        else:
            sum_sq = tl.zeros((STAT_CHUNK, NORM_ROWS), dtype=tl.float32)
            for b in range(0, num_stat_blocks, STAT_CHUNK):
                blocks = b + tl.arange(0, STAT_CHUNK)
                sum_sq += tl.load(stats_in_ptr + blocks[:, None] * M + rows_n[None, :],
                                  mask=(blocks < num_stat_blocks)[:, None] & (rows_n < M)[None, :], other=0.0)
    if DOT:
        if X_LEFT:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_M, BLOCK_K), dtype=tl.float32)
    acc_up = acc  # GATE_SILU's second accumulator (unused otherwise)
    for k in range(k_start, k_end, BLOCK_K):
        cols = k + offs_k
        x_mask = m_mask if EVEN_K else m_mask & (cols < k_end)[None, :]
        x = tl.load(x_rows + cols[None, :], mask=x_mask, other=0.0)
        acc = _weight_product(acc, w_rows, cols, k_end, x, EVEN_K, DOT, UPCAST_DOT, X_LEFT)
        if GATE_SILU:
            acc_up = _weight_product(acc_up, w_rows + w_up_offset, cols, k_end, x, EVEN_K, DOT, UPCAST_DOT, X_LEFT)
    if X_LEFT:  # back to [BLOCK_N, BLOCK_M] for the epilogue and the split-K partials
        acc = tl.trans(acc)
        if GATE_SILU:
            acc_up = tl.trans(acc_up)
        else:
            acc_up = acc
    if not DOT:
        acc = tl.sum(acc, axis=2)
        if GATE_SILU:
            acc_up = tl.sum(acc_up, axis=2)
        else:
            acc_up = acc
    rstd = tl.zeros((BLOCK_M,), dtype=tl.float32)  # 1 / rms of each row (NORM), 0 on padded rows
    if NORM:
        rstd_n = tl.math.rsqrt(tl.sum(sum_sq, axis=0) / K + eps)  # fixed order: deterministic
        if NORM_ROWS == BLOCK_M:
            rstd = rstd_n
        else:
            for r in tl.static_range(NORM_ROWS):
                rstd = tl.where(offs_m == r, tl.sum(tl.where(rows_n == r, rstd_n, 0.0), axis=0), rstd)

    if SPLIT_K == 1:
        _epilogue(acc, acc_up, rstd, out_ptr, bias_ptr, res_ptr, stats_out_ptr, pid_n, offs_n, offs_m, M, N,
                  stride_om, NORM, HAS_BIAS, ADD, GATE_SILU)
    else:
        tile_size: tl.constexpr = BLOCK_N * BLOCK_M
        tiles: tl.constexpr = 2 if GATE_SILU else 1
        tile = tl.arange(0, BLOCK_N)[:, None] * BLOCK_M + offs_m[None, :]
        block_ws = ws_ptr + pid_n.to(tl.int64) * (SPLIT_K * tiles * tile_size)
        tl.store(block_ws + pid_k * (tiles * tile_size) + tile, acc, cache_modifier=".cg")  # to L2
        if GATE_SILU:
            tl.store(block_ws + pid_k * (tiles * tile_size) + tile_size + tile, acc_up, cache_modifier=".cg")
        # Ordering (as in ops/decode_attention.py's split kernel): stores of all threads -> bar.sync ->
        # one thread's atom.acq_rel.gpu releases them; the last arrival's acquire -> bar.sync ->
        # its loads, which go to L2 (.cg), so no stale L1 line can be read.
        tl.debug_barrier()
        arrived = tl.atomic_add(counter_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:  # last of the block: sum the partials in split order
            tl.debug_barrier()  # all threads' loads after the (one-thread) acquire above
            total = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            total_up = total
            for s in tl.static_range(SPLIT_K):
                total += tl.load(block_ws + s * (tiles * tile_size) + tile, cache_modifier=".cg")
                if GATE_SILU:
                    total_up += tl.load(block_ws + s * (tiles * tile_size) + tile_size + tile, cache_modifier=".cg")
            tl.store(counter_ptr + pid_n, 0)  # ready for the next launch
            _epilogue(total, total_up, rstd, out_ptr, bias_ptr, res_ptr, stats_out_ptr, pid_n, offs_n, offs_m,
                      M, N, stride_om, NORM, HAS_BIAS, ADD, GATE_SILU)


# ---------------------------------------------------------------------------------------- launch
_MAX_STAT_FLOATS = 2048  # row statistics NORM holds in registers across the K loop (16 per thread)

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


def _launch(x, weight, bias, config: SkinnyConfig, *, norm=None, residual=None, gate_silu=False, out=None):
    """One skinny-GEMM launch. ``norm`` = (eps, row_stats): NORM, for a W that holds the norm's
    weight (see the module docstring). ``residual``: the ADD epilogue, and the result is (out, row_stats). ``gate_silu``: W is
    [gate; up] and out = silu(x W_gate^T) * (x W_up^T). ``out``: an [m, n] buffer to write into (rows
    contiguous), else one is allocated."""
    m, k = x.shape
    assert x.stride(1) == 1 and weight.stride(1) == 1 and weight.shape[1] == k > 0
    assert m <= _MAX_BLOCK_M, f"skinny GEMM is for at most {_MAX_BLOCK_M} rows, got {m}"
    n = weight.shape[0] // 2 if gate_silu else weight.shape[0]
    assert not gate_silu or (bias is None and weight.shape[0] == 2 * n), "gate_silu: W = [gate; up], no bias"
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    assert out.shape == (m, n) and out.dtype == x.dtype and out.stride(1) == 1, (out.shape, out.dtype, out.stride())
    cfg = config
    block_n = cfg.block_n // 2 if gate_silu else cfg.block_n  # the config counts W rows per program
    if cfg.dot:
        block_n = max(block_n, 16)  # tl.dot's smallest tile
    num_blocks = triton.cdiv(n, block_n)
    stats_out = None
    if residual is not None:
        assert residual.shape == out.shape and residual.dtype == x.dtype and residual.is_contiguous()
        stats_out = torch.empty((num_blocks, m), dtype=torch.float32, device=x.device)
    if m == 0:
        return out if residual is None else (out, stats_out)
    eps, stats_in = norm if norm is not None else (0.0, out)
    if norm is not None:
        assert stats_in.dtype == torch.float32 and stats_in.dim() == 2 and stats_in.shape[1] == m
        assert stats_in.is_contiguous()
    block_m = max(16, triton.next_power_of_2(m)) if cfg.dot else triton.next_power_of_2(m)
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    split_k = triton.cdiv(k, k_per_split)  # rounding K up to blocks can leave trailing splits empty
    ws = counters = out  # placeholders, unread unless split
    if split_k > 1:
        floats = split_k * num_blocks * block_n * block_m * (2 if gate_silu else 1)
        workspace = _split_k_workspace(x.device, floats, num_blocks)
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
    norm_rows = triton.next_power_of_2(m)
    num_stat_blocks = stats_in.shape[0] if norm is not None else 1
    stats_held = triton.next_power_of_2(num_stat_blocks) * norm_rows <= _MAX_STAT_FLOATS
    stat_chunk = triton.next_power_of_2(num_stat_blocks) if stats_held else max(1, _MAX_STAT_FLOATS // norm_rows)
    _skinny_kernel[(num_blocks, split_k)](
        x, weight, out if bias is None else bias, out, ws, counters, stats_in,
        out if residual is None else residual, out if stats_out is None else stats_out, eps,
        m, n, k, k_per_split, num_stat_blocks, n * weight.stride(0), x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, NORM=norm is not None, ADD=residual is not None, GATE_SILU=gate_silu,
        DOT=cfg.dot, X_LEFT=cfg.dot and cfg.x_left, UPCAST_DOT=not x.is_cuda, EVEN_K=k_per_split % cfg.block_k == 0 and k % k_per_split == 0,
        SPLIT_K=split_k, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=cfg.block_k, NORM_ROWS=norm_rows,
        STAT_CHUNK=stat_chunk, STATS_HELD=stats_held, USE_PDL=use_pdl, PREFETCH_LINES=prefetch_lines if use_pdl else 1,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=use_pdl,
        enable_fp_fusion=False,  # as every Ember kernel: products round on their own
    )
    return out if residual is None else (out, stats_out)
