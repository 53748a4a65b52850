"""Greedy argmax over each row of the logits: the first index of the row's maximum.

torch's reduction takes ~8-9 us for one 152k-logit row on an H200 (one long serial chain in a
few blocks). Here a first launch reduces ARGMAX_BLOCK-logit splits of every row in parallel,
each to (max, first index), and a second, PDL-launched, merges a row's splits. Ties go to the
smallest index, as torch.argmax does; NaN counts as larger than everything, as in torch, so a
NaN logit is returned rather than hidden (a row holding both NaN and +inf may pick either: both
are broken rows).
"""

import torch
import triton
import triton.language as tl

from ember.ops.dispatch import pdl_enabled, pdl_sync, use_triton

ARGMAX_BLOCK = 4096  # logits per split program: 38 programs for Qwen3's 151,936 at batch 1
ARGMAX_NUM_WARPS = 4


@triton.jit
def _argmax_split_kernel(logits_ptr, part_val_ptr, part_idx_ptr, V, stride_row, NUM_SPLITS,
                         BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    if USE_PDL:  # the logits come from the kernel before
        pdl_sync()
    row = tl.program_id(0)
    split = tl.program_id(1)
    ids = split * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(logits_ptr + row.to(tl.int64) * stride_row + ids, mask=ids < V, other=-float("inf"))
    x = x.to(tl.float32)
    x = tl.where(x != x, float("inf"), x)  # NaN wins, as in torch
    best = tl.max(x, axis=0)
    best_id = tl.min(tl.where((x == best) & (ids < V), ids, V), axis=0)
    part = row * NUM_SPLITS + split
    tl.store(part_val_ptr + part, best)
    tl.store(part_idx_ptr + part, best_id)


@triton.jit
def _argmax_merge_kernel(part_val_ptr, part_idx_ptr, out_ptr, host_out_ptr, host_offset_ptr, V, NUM_SPLITS,
                         S_PAD: tl.constexpr, HOST_OUT: tl.constexpr, USE_PDL: tl.constexpr):
    if USE_PDL:  # the partials come from the split kernel
        pdl_sync()
    row = tl.program_id(0)
    splits = tl.arange(0, S_PAD)
    valid = splits < NUM_SPLITS
    val = tl.load(part_val_ptr + row * NUM_SPLITS + splits, mask=valid, other=-float("inf"))
    idx = tl.load(part_idx_ptr + row * NUM_SPLITS + splits, mask=valid, other=V)
    best = tl.max(val, axis=0)
    # The splits are in index order and each holds its first maximum: the smallest index wins.
    token = tl.min(tl.where(valid & (val == best), idx, V), axis=0)
    tl.store(out_ptr + row, token.to(out_ptr.dtype.element_ty))
    if HOST_OUT:  # also straight into pinned host memory (mapped), at an offset read on device
        tl.store(host_out_ptr + tl.load(host_offset_ptr) + row, token.to(host_out_ptr.dtype.element_ty))


def argmax_rows_triton(logits: torch.Tensor, out: torch.Tensor | None = None,
                       host_out: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    B, V = logits.shape
    assert logits.stride(1) == 1 and logits.dtype in (torch.float32, torch.bfloat16, torch.float16)
    if out is None:
        out = torch.empty(B, dtype=torch.int64, device=logits.device)
    assert out.shape == (B,) and out.is_contiguous() and out.dtype in (torch.int64, torch.int32)
    if B == 0:
        return out
    block = min(ARGMAX_BLOCK, triton.next_power_of_2(V)) if logits.is_cuda else 256  # CPU: several splits
    num_splits = triton.cdiv(V, block)
    part_val = torch.empty(B * num_splits, dtype=torch.float32, device=logits.device)
    part_idx = torch.empty(B * num_splits, dtype=torch.int32, device=logits.device)
    use_pdl = pdl_enabled(logits.device)
    _argmax_split_kernel[(B, num_splits)](logits, part_val, part_idx, V, logits.stride(0), num_splits,
                                          BLOCK=block, USE_PDL=use_pdl, num_warps=ARGMAX_NUM_WARPS,
                                          launch_pdl=use_pdl)
    host, offset = _check_host_out(host_out, out) if host_out is not None else (out, out)  # dummies: never read
    _argmax_merge_kernel[(B,)](part_val, part_idx, out, host, offset, V, num_splits,
                               S_PAD=triton.next_power_of_2(num_splits), HOST_OUT=host_out is not None,
                               USE_PDL=use_pdl, num_warps=1, launch_pdl=use_pdl)
    return out


def _check_host_out(host_out, out):
    host, offset = host_out
    assert host.dtype == out.dtype and host.is_contiguous() and host.dim() == 1
    assert offset.dtype == torch.int32 and offset.numel() >= 1 and offset.device == out.device
    return host, offset


def argmax_rows_reference(logits: torch.Tensor, out: torch.Tensor | None = None,
                          host_out: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    tokens = logits.argmax(dim=-1)
    if out is not None:
        tokens = out.copy_(tokens)
    if host_out is not None:
        host, offset = _check_host_out(host_out, tokens)
        start = int(offset[0])
        host[start: start + len(tokens)].copy_(tokens)
    return tokens


def argmax_rows(logits: torch.Tensor, out: torch.Tensor | None = None,
                host_out: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """int64 [B] (or into ``out``, int64/int32 [B]): each row's first maximal index.

    ``host_out`` = (host, offset): the tokens also go to ``host[offset[0] + row]``; ``host`` is 1-D
    pinned memory of ``out``'s dtype (a kernel writes it directly, no copy), ``offset`` an int32
    device tensor, read when the kernel runs (so a CUDA graph can send each replay elsewhere)."""
    impl = argmax_rows_triton if use_triton(logits) else argmax_rows_reference
    return impl(logits, out, host_out)
