"""Experiment: the decode MLP (gate_up + silu·mul, then down + residual add) as one persistent
kernel whose two phases meet at a grid barrier, against the engine's two skinny-GEMM launches.

Why (benchmarks/NOTES.md, session 6): at batch 1 each small GEMV pays a ramp, a tail and a kernel
boundary (8B down: 28.8 us against a 23.9 us floor). Here the down phase starts inside the same
kernel: while a program waits at the barrier for the other programs' activations, it already
asks L2 for its first down-weight tiles, so the weight stream need not stop between the phases.
Predicted (not measured yet): 8B -2 to -3 us per layer (of ~9 us lost in the MLP today), 0.6B
-1.5 to -2 us; worth wiring into the model only if the sweep below shows >= 2 us at 8B.

Grid barrier: every program of the grid must be resident at once, so the grid is at most the
SM count times the programs per SM that fit (``--programs-per-sm``). A generation counter makes
it reusable across launches and CUDA-graph replays without a reset launch. The interpreter runs
programs one after another, so there (and in the CPU test) the phases are two launches instead.

Usage on a GPU:  python benchmarks/persistent_mlp.py [--shapes 0.6B,8B] [--programs-per-sm 1,2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ember.bench.stats import graph_us
from ember.ops.dispatch import l2_prefetch, pdl_enabled, pdl_sync

SHAPES = {"0.6B": (1024, 3072), "8B": (4096, 12288)}  # hidden, intermediate


@triton.jit
def _persistent_mlp_kernel(x_ptr, w_gu_ptr, w_down_ptr, res_ptr, act_ptr, out_ptr, sync_ptr, M, H, I,
                           PHASE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N1: tl.constexpr,
                           BLOCK_K1: tl.constexpr, BLOCK_N2: tl.constexpr, BLOCK_K2: tl.constexpr,
                           PREFETCH: tl.constexpr, USE_PDL: tl.constexpr, UPCAST: tl.constexpr):
    """PHASE 0: both phases with the grid barrier; 1: gate_up + silu·mul only; 2: down + add only."""
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    dtype = out_ptr.dtype.element_ty
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    if USE_PDL:
        pdl_sync()
    if PHASE != 2:  # act[:, block] = silu(x W_gate^T) * (x W_up^T), blocks pid, pid + P, ...
        offs_k1 = tl.arange(0, BLOCK_K1)
        for nb in range(pid, tl.cdiv(I, BLOCK_N1), num_programs):
            offs_n = nb * BLOCK_N1 + tl.arange(0, BLOCK_N1)
            rows = tl.minimum(offs_n, I - 1).to(tl.int64)
            acc_g = tl.zeros((BLOCK_N1, BLOCK_M), dtype=tl.float32)
            acc_u = tl.zeros((BLOCK_N1, BLOCK_M), dtype=tl.float32)
            for k in range(0, H, BLOCK_K1):
                cols = k + offs_k1
                x = tl.load(x_ptr + offs_m[:, None] * H + cols[None, :], mask=m_mask[:, None], other=0.0)
                wg = tl.load(w_gu_ptr + rows[:, None] * H + cols[None, :])
                wu = tl.load(w_gu_ptr + (rows + I)[:, None] * H + cols[None, :])
                if UPCAST:  # the interpreter's bf16 dot is broken
                    x, wg, wu = x.to(tl.float32), wg.to(tl.float32), wu.to(tl.float32)
                acc_g = tl.dot(wg, tl.trans(x), acc_g, input_precision="ieee")
                acc_u = tl.dot(wu, tl.trans(x), acc_u, input_precision="ieee")
            gate = acc_g.to(dtype).to(tl.float32)  # rounded as ops.silu_mul rounds
            act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
            y = (act * acc_u.to(dtype).to(tl.float32)).to(dtype)
            tl.store(act_ptr + offs_m[None, :] * I + offs_n[:, None], y,
                     mask=(offs_n < I)[:, None] & m_mask[None, :])
    if PHASE == 0:
        if PREFETCH:  # weights only: they do not depend on the other programs
            first = pid * BLOCK_N2 + tl.arange(0, BLOCK_N2)
            lines = tl.arange(0, 4) * 64  # the first 4 x 128 bytes of each of its down rows
            l2_prefetch(w_down_ptr + tl.minimum(first, H - 1).to(tl.int64)[:, None] * I + lines[None, :])
        # Read the generation before arriving: it cannot move until every program has arrived.
        generation = tl.atomic_add(sync_ptr + 1, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()  # all threads' act stores before the one-thread release below
        arrived = tl.atomic_add(sync_ptr, 1, sem="acq_rel", scope="gpu")
        if arrived == num_programs - 1:
            tl.atomic_xchg(sync_ptr, 0, sem="relaxed", scope="gpu")
            tl.atomic_add(sync_ptr + 1, 1, sem="release", scope="gpu")
        else:
            while tl.atomic_add(sync_ptr + 1, 0, sem="acquire", scope="gpu") == generation:
                pass
        tl.debug_barrier()
    if PHASE != 1:  # out[:, block] = act W_down^T + res
        offs_k2 = tl.arange(0, BLOCK_K2)
        for nb in range(pid, tl.cdiv(H, BLOCK_N2), num_programs):
            offs_n = nb * BLOCK_N2 + tl.arange(0, BLOCK_N2)
            rows = tl.minimum(offs_n, H - 1).to(tl.int64)
            acc = tl.zeros((BLOCK_N2, BLOCK_M), dtype=tl.float32)
            for k in range(0, I, BLOCK_K2):
                cols = k + offs_k2
                a = tl.load(act_ptr + offs_m[:, None] * I + cols[None, :], mask=m_mask[:, None], other=0.0,
                            cache_modifier=".cg")  # written by other programs: from L2, never a stale L1
                w = tl.load(w_down_ptr + rows[:, None] * I + cols[None, :])
                if UPCAST:
                    a, w = a.to(tl.float32), w.to(tl.float32)
                acc = tl.dot(w, tl.trans(a), acc, input_precision="ieee")
            mask = (offs_n < H)[:, None] & m_mask[None, :]
            offs = offs_m[None, :] * H + offs_n[:, None]
            y = acc.to(dtype).to(tl.float32) + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + offs, y.to(dtype), mask=mask)


_sync: dict[torch.device, torch.Tensor] = {}


def persistent_mlp(x, w_gu, w_down, res, *, programs=None, block_n1=32, block_k1=256, block_n2=32, block_k2=256,
                   num_stages=3, prefetch=True, split_phases=None):
    """``silu(x Wg^T) * (x Wu^T)`` then ``· W_down^T + res``; x, res [M, H], M <= 16, bf16/fp16."""
    m, h = x.shape
    i = w_down.shape[1]
    assert m <= 16 and w_gu.shape == (2 * i, h) and w_down.shape == (h, i) and res.shape == (m, h)
    assert h % block_k1 == 0 and i % block_k2 == 0 and all(t.is_contiguous() for t in (x, w_gu, w_down, res))
    device = x.device
    interpret = not x.is_cuda
    split = interpret if split_phases is None else split_phases
    if programs is None:
        programs = torch.cuda.get_device_properties(device).multi_processor_count if x.is_cuda else 4
    if device not in _sync:
        _sync[device] = torch.zeros(2, dtype=torch.int32, device=device)  # arrivals, generation
    act = torch.empty((m, i), dtype=x.dtype, device=device)
    out = torch.empty_like(res)
    use_pdl = pdl_enabled(device)
    common = dict(BLOCK_M=16, BLOCK_N1=block_n1, BLOCK_K1=block_k1, BLOCK_N2=block_n2, BLOCK_K2=block_k2,
                  PREFETCH=prefetch and not interpret, USE_PDL=use_pdl, UPCAST=interpret,
                  num_warps=4, num_stages=num_stages, launch_pdl=use_pdl)
    args = (x, w_gu, w_down, res, act, out, _sync[device], m, h, i)
    if not split:
        check_resident(_persistent_mlp_kernel.warmup(*args, grid=(programs,), PHASE=0, **common), programs, device)
    for phase in ((1, 2) if split else (0,)):
        _persistent_mlp_kernel[(programs,)](*args, PHASE=phase, **common)
    return out


_checked: set = set()


def check_resident(kernel, programs: int, device: torch.device) -> None:
    """Raise unless ``programs`` copies of the compiled ``kernel`` fit on the GPU at once: a grid
    barrier with one program waiting for a slot would never return. (Occupancy as in Triton's
    fused-softmax tutorial: registers and shared memory per SM.)"""
    key = (id(kernel), programs)
    if key in _checked:
        return
    kernel._init_handles()  # loads the module: n_regs is known from here on (as Triton's tutorial does)
    props = triton.runtime.driver.active.utils.get_device_properties(device.index or 0)
    per_sm = props["max_num_regs"] // max(1, kernel.n_regs * 32 * kernel.metadata.num_warps)
    if kernel.metadata.shared:
        per_sm = min(per_sm, props["max_shared_mem"] // kernel.metadata.shared)
    if programs > per_sm * props["multiprocessor_count"]:
        raise RuntimeError(f"{programs} programs cannot all be resident ({per_sm} per SM fit, "
                           f"{kernel.n_regs} registers, {kernel.metadata.shared} B shared): the barrier would hang")
    _checked.add(key)


def reference(x, w_gu, w_down, res):
    gate, up = F.linear(x, w_gu).chunk(2, dim=-1)
    act = (F.silu(gate.float()).to(x.dtype).float() * up.float()).to(x.dtype)
    return F.linear(act, w_down) + res


# ----------------------------------------------------------------------------------- GPU sweep


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="0.6B,8B")
    p.add_argument("--programs-per-sm", default="1,2", help="grids to try, as SM count multiples")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from ember import ops

    device = torch.device("cuda")
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    results = []
    for name in args.shapes.split(","):
        h, i = SHAPES[name]
        copies = max(2, int(2e9 // (3 * h * i * 2)))  # ~2 GB of weights: no call finds its weights in L2
        gen = torch.Generator(device="cuda").manual_seed(0)
        w_gu = [torch.randn(2 * i, h, device=device, generator=gen, dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        w_down = [torch.randn(h, i, device=device, generator=gen, dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        x = torch.randn(1, h, device=device, generator=gen, dtype=torch.bfloat16)
        res = torch.randn(1, h, device=device, generator=gen, dtype=torch.bfloat16)
        want = reference(x, w_gu[0], w_down[0], res)
        floor_us = 3 * h * i * 2 / 4.2e12 * 1e6
        engine = graph_us(lambda: [ops.linear(ops.linear_silu_mul(x, w_gu[c]), w_down[c]) for c in range(copies)],
                          copies)
        row = {"shape": name, "floor_us_at_4.2TBps": floor_us, "engine_two_launches_us": engine, "persistent": []}
        print(f"{name}: floor {floor_us:.1f} us, engine (gate_up+silu, down) {engine:.2f} us", flush=True)
        for per_sm in map(int, args.programs_per_sm.split(",")):
            for prefetch in (True, False):
                for bn, bk, stages in ((32, 256, 3), (64, 128, 4), (16, 256, 4)):
                    kw = dict(programs=sms * per_sm, block_n1=bn, block_k1=bk, block_n2=bn, block_k2=bk,
                              num_stages=stages, prefetch=prefetch)
                    try:
                        got = persistent_mlp(x, w_gu[0], w_down[0], res, **kw)
                        rel = ((got.float() - want.float()).norm() / want.float().norm()).item()
                        us = graph_us(lambda: [persistent_mlp(x, w_gu[c], w_down[c], res, **kw)
                                               for c in range(copies)], copies)
                    except Exception as exc:  # out of resources etc.: recorded, the sweep goes on
                        row["persistent"].append({**kw, "error": f"{type(exc).__name__}: {exc}"[:300]})
                        print(f"  {kw}: {type(exc).__name__}", flush=True)
                        continue
                    row["persistent"].append({**kw, "us": us, "rel_err": rel})
                    print(f"  {per_sm}/SM {bn}x{bk} st{stages} prefetch={prefetch}: {us:.2f} us "
                          f"({engine - us:+.2f} vs engine), rel err {rel:.1e}", flush=True)
        results.append(row)
    out = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "triton": triton.__version__,
           "results": results}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
