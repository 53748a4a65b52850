"""A counter-based random number per (seed, step, token): the u behind every sampled draw.

u_i is a hash of (seed, step, i) (murmur3's fmix32 over the words of each), computed identically
on uint32 words in Triton and in int64 torch tensors: the two are bit-identical, and a draw
depends on nothing else, not on the batch, the device or any generator state. ops/sampling.py
draws the Gumbel-max token from it.
"""

import torch
import triton
import triton.language as tl

# murmur3's fmix32 finaliser constants and two salts (golden ratio, splitmix) for the row keys.
_C1 = tl.constexpr(0x85EBCA6B)
_C2 = tl.constexpr(0xC2B2AE35)
_SALT1 = tl.constexpr(0x9E3779B9)
_SALT2 = tl.constexpr(0x7F4A7C15)
_MASK32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------------- torch
def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    # a * c mod 2**32 for a < 2**32 without int64 overflow: multiply by the 16-bit halves of c.
    return (a * (c & 0xFFFF) + (((a * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def _fmix32_torch(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, _C1.value)
    h = h ^ (h >> 13)
    h = _mul32(h, _C2.value)
    return h ^ (h >> 16)


def random_uniform_reference(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """u[b, i] in (0, 1), float32 [B, V]: a hash of (seeds[b], steps[b], i)."""
    seeds, steps = seeds.to(torch.int64), steps.to(torch.int64)
    s_lo, s_hi, t_lo, t_hi = seeds & _MASK32, (seeds >> 32) & _MASK32, steps & _MASK32, (steps >> 32) & _MASK32
    f = _fmix32_torch
    key1 = f(f(f(f(s_lo ^ _SALT1.value) ^ s_hi) ^ t_lo) ^ t_hi)
    key2 = f(f(f(f(t_lo ^ _SALT2.value) ^ t_hi) ^ s_lo) ^ s_hi)
    ids = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)
    h = f(f(ids[None, :] ^ key1[:, None]) ^ key2[:, None])
    # 23 random bits + 0.5 ulp: exact in fp32 and never 0 or 1.
    return ((h >> 9).to(torch.float32) + 0.5) * 2.0**-23


# ---------------------------------------------------------------------------------- Triton
@triton.jit
def _fmix32(h):
    h ^= h >> 16
    h *= _C1
    h ^= h >> 13
    h *= _C2
    h ^= h >> 16
    return h


@triton.jit
def row_keys(seed, step):
    s_lo = (seed & 0xFFFFFFFF).to(tl.uint32)
    s_hi = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    t_lo = (step & 0xFFFFFFFF).to(tl.uint32)
    t_hi = ((step >> 32) & 0xFFFFFFFF).to(tl.uint32)
    key1 = _fmix32(_fmix32(_fmix32(_fmix32(s_lo ^ _SALT1) ^ s_hi) ^ t_lo) ^ t_hi)
    key2 = _fmix32(_fmix32(_fmix32(_fmix32(t_lo ^ _SALT2) ^ t_hi) ^ s_lo) ^ s_hi)
    return key1, key2


@triton.jit
def uniform(ids, key1, key2):
    h = _fmix32(_fmix32(ids.to(tl.uint32) ^ key1) ^ key2)
    return ((h >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # 2**-23


@triton.jit
def _uniform_kernel(seeds_ptr, steps_ptr, out_ptr, V, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    ids = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    key1, key2 = row_keys(tl.load(seeds_ptr + row), tl.load(steps_ptr + row))
    tl.store(out_ptr + row.to(tl.int64) * V + ids, uniform(ids, key1, key2), mask=ids < V)


def random_uniform_triton(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    out = torch.empty(seeds.shape[0], vocab_size, dtype=torch.float32, device=seeds.device)
    grid = (seeds.shape[0], triton.cdiv(vocab_size, 1024))
    seeds, steps = seeds.to(torch.int64).contiguous(), steps.to(torch.int64).contiguous()
    _uniform_kernel[grid](seeds, steps, out, vocab_size, BLOCK=1024)
    return out
