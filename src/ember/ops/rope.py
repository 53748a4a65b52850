"""Rotary embeddings: the cos/sin cache, and the fused q/k-norm + RoPE + KV-cache store.

Numerics follow HF's Qwen3: inv_freq is computed on the CPU in fp32 exactly as
``transformers.modeling_rope_utils`` does (HF builds it at init on the CPU, then moves it),
cos/sin in fp32 times the attention factor; q/k are RMS-normed per head (``Qwen3RMSNorm``), and
RoPE casts cos/sin to the model dtype and rounds ``q*cos``, ``rotate_half(q)*sin`` and their sum.
The kernel computes in fp32 but rounds at those same points (a few cheap casts per element),
and is compiled without FMA contraction, which would otherwise fuse a product into the sum
unrounded (on an H100/H200 it turned ~20% of outputs 1 ulp off HF).
"""

import math

import torch
import triton
import triton.language as tl

from ember.errors import ConfigError
from ember.ops.dispatch import pdl_enabled, pdl_sync, use_triton
from ember.ops.norm import rms_norm_reference

# Below this many tokens (decode) a program takes one head with one warp, so that small batches
# still spread over the SMs; above it 8 heads with 4 warps, which measured ~3x faster than one
# head per program at T = 4096-16384 on an H200 (~3 TB/s, vs ~8 us at T <= 64 either way).
_MANY_TOKENS = 64


def _yarn_inv_freq(dim: int, base: float, params: dict, max_positions: int) -> tuple[torch.Tensor, float]:
    """``transformers.modeling_rope_utils._compute_yarn_parameters``, step for step."""
    original_max = params.get("original_max_position_embeddings", max_positions)
    factor = params.get("factor")
    if factor is None:  # HF: config.max_position_embeddings / original; max_positions stands in for it
        factor = max_positions / original_max

    def get_mscale(scale, mscale=1):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(num_rotations):
        return (dim * math.log(original_max / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # HF: prevent a division by zero in the ramp

    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    inv_freq_extrapolation = 1.0 / pos_freqs
    inv_freq_interpolation = 1.0 / (factor * pos_freqs)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp
    inv_freq = (
        inv_freq_interpolation * (1 - extrapolation_factor) + inv_freq_extrapolation * extrapolation_factor
    )
    return inv_freq, attention_factor


def build_rope_cache(
    head_dim: int,
    max_positions: int,
    rope_theta: float,
    rope_scaling: dict | None,
    device: torch.device | str | None,
) -> torch.Tensor:
    """``cos_sin [max_positions, head_dim]`` fp32: cos of the head_dim//2 frequencies, then their sin.

    rope_scaling: None, or a config dict whose "rope_type" (or legacy "type") is "default",
    "linear" or "yarn". For yarn without "factor" / "original_max_position_embeddings",
    max_positions stands in for HF's ``config.max_position_embeddings``.
    """
    params = dict(rope_scaling or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("partial_rotary_factor other than 1.0 is not supported")
    if rope_type == "yarn":
        inv_freq, attention_factor = _yarn_inv_freq(head_dim, rope_theta, params, max_positions)
    elif rope_type in ("default", "linear"):
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim
        inv_freq, attention_factor = 1.0 / (rope_theta ** exponents), 1.0
        if rope_type == "linear":
            inv_freq /= params["factor"]
    else:
        raise ConfigError(f"rope type {rope_type!r} is not supported (use default, linear or yarn)")
    # HF: position_ids.float() * inv_freq, then cos()/sin() * attention_scaling, all fp32 on the device.
    positions = torch.arange(max_positions, dtype=torch.int64, device=device).float()
    freqs = positions[:, None] * inv_freq.to(device=device)[None, :]
    return torch.cat((freqs.cos() * attention_factor, freqs.sin() * attention_factor), dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def qk_norm_rope_store_kv_reference(
    q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions, k_cache, v_cache, slot_mapping, eps
) -> torch.Tensor:
    """HF's q_norm/k_norm + ``apply_rotary_pos_emb``; k and v go to the cache, q comes back."""
    q = rms_norm_reference(q, q_norm_weight, eps)
    k = rms_norm_reference(k, k_norm_weight, eps)
    cos, sin = cos_sin[positions.long()].chunk(2, dim=-1)
    cos = torch.cat((cos, cos), dim=-1).to(q.dtype)[:, None, :]  # [T, 1, D], HF: emb = cat(freqs, freqs)
    sin = torch.cat((sin, sin), dim=-1).to(q.dtype)[:, None, :]
    q_out = (q * cos) + (_rotate_half(q) * sin)
    k_out = (k * cos) + (_rotate_half(k) * sin)
    written = slot_mapping >= 0
    slots = slot_mapping[written].long()
    block_size = k_cache.shape[1]
    k_cache[slots // block_size, slots % block_size] = k_out[written].to(k_cache.dtype)
    v_cache[slots // block_size, slots % block_size] = v[written].to(v_cache.dtype)
    return q_out


@triton.jit
def _norm_rope_heads(src, weight_ptr, cols, mask, cos, sin, eps, HALF_DIM: tl.constexpr, dtype: tl.constexpr):
    """RMS-norm then RoPE of a [HEAD_BLOCK, half] tile pair; returns both output halves, rounded."""
    x1 = tl.load(src + cols, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF_DIM + cols, mask=mask, other=0.0).to(tl.float32)
    variance = (tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF_DIM)
    rstd = tl.math.rsqrt(variance + eps)[:, None]
    w1 = tl.load(weight_ptr + cols, mask=cols < HALF_DIM).to(tl.float32)
    w2 = tl.load(weight_ptr + HALF_DIM + cols, mask=cols < HALF_DIM).to(tl.float32)
    # `.to(dtype).to(tl.float32)` rounds to the model dtype where HF does, then goes on in fp32
    # (inline rather than a helper: nested jit calls are slow under TRITON_INTERPRET).
    n1 = (w1 * (x1 * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)  # Qwen3RMSNorm
    n2 = (w2 * (x2 * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    # rotate_half(x) = (-x2, x1); HF rounds each product and then the sum.
    out1 = (n1 * cos).to(dtype).to(tl.float32) - (n2 * sin).to(dtype).to(tl.float32)
    out2 = (n2 * cos).to(dtype).to(tl.float32) + (n1 * sin).to(dtype).to(tl.float32)
    return out1.to(dtype), out2.to(dtype)


@triton.jit
def _qk_norm_rope_store_kv_kernel(
    q_ptr, k_ptr, v_ptr, q_norm_weight_ptr, k_norm_weight_ptr, cos_sin_ptr, positions_ptr,
    k_cache_ptr, v_cache_ptr, slot_mapping_ptr, q_out_ptr,
    q_stride_t, q_stride_h, k_stride_t, k_stride_h, v_stride_t, v_stride_h, eps,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_HALF: tl.constexpr, HEAD_BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
):
    if USE_PDL:  # q/k/v, positions, slots and the caches all follow earlier kernels or copies
        pdl_sync()
    # Program (token, j): j < ceil(Hq / HEAD_BLOCK) handles a block of q heads, the rest kv heads.
    # q_out, cos_sin and the caches are contiguous, so their strides follow from the constexprs.
    HALF_DIM: tl.constexpr = HEAD_DIM // 2
    token = tl.program_id(0).to(tl.int64)
    head_program = tl.program_id(1)
    num_q_programs: tl.constexpr = (NUM_Q_HEADS + HEAD_BLOCK - 1) // HEAD_BLOCK
    dtype = q_out_ptr.dtype.element_ty
    half = tl.arange(0, BLOCK_HALF)[None, :]
    half_mask = half < HALF_DIM
    position = tl.load(positions_ptr + token).to(tl.int64)
    # HF casts cos/sin to the model dtype before using them.
    cos_sin_row = cos_sin_ptr + position * HEAD_DIM
    cos = tl.load(cos_sin_row + half, mask=half_mask).to(dtype).to(tl.float32)
    sin = tl.load(cos_sin_row + HALF_DIM + half, mask=half_mask).to(dtype).to(tl.float32)
    if head_program < num_q_programs:
        heads = (head_program * HEAD_BLOCK + tl.arange(0, HEAD_BLOCK))[:, None]
        mask = (heads < NUM_Q_HEADS) & half_mask
        src = q_ptr + token * q_stride_t + heads * q_stride_h
        out1, out2 = _norm_rope_heads(src, q_norm_weight_ptr, half, mask, cos, sin, eps, HALF_DIM, dtype)
        dst = q_out_ptr + (token * NUM_Q_HEADS + heads) * HEAD_DIM
        tl.store(dst + half, out1, mask=mask)
        tl.store(dst + HALF_DIM + half, out2, mask=mask)
    else:
        slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
        if slot >= 0:  # a negative slot means: do not cache this token
            heads = ((head_program - num_q_programs) * HEAD_BLOCK + tl.arange(0, HEAD_BLOCK))[:, None]
            mask = (heads < NUM_KV_HEADS) & half_mask
            src = k_ptr + token * k_stride_t + heads * k_stride_h
            out1, out2 = _norm_rope_heads(src, k_norm_weight_ptr, half, mask, cos, sin, eps, HALF_DIM, dtype)
            # [num_blocks, block_size, Hkv, D] contiguous: the slot is the row of a [slots, Hkv, D] view.
            cache_offset = (slot * NUM_KV_HEADS + heads) * HEAD_DIM
            k_dst = k_cache_ptr + cache_offset
            tl.store(k_dst + half, out1.to(k_cache_ptr.dtype.element_ty), mask=mask)
            tl.store(k_dst + HALF_DIM + half, out2.to(k_cache_ptr.dtype.element_ty), mask=mask)
            v_src = v_ptr + token * v_stride_t + heads * v_stride_h
            v_dst = v_cache_ptr + cache_offset
            for part in tl.static_range(2):
                value = tl.load(v_src + part * HALF_DIM + half, mask=mask)
                tl.store(v_dst + part * HALF_DIM + half, value.to(v_cache_ptr.dtype.element_ty), mask=mask)


def qk_norm_rope_store_kv_triton(
    q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions, k_cache, v_cache, slot_mapping, eps
) -> torch.Tensor:
    """One launch. q/k/v may be strided views (e.g. of the merged qkv output) with contiguous head_dim;
    cos_sin and the caches must be contiguous."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert head_dim % 2 == 0 and k.shape == v.shape == (num_tokens, num_kv_heads, head_dim), (q.shape, k.shape)
    assert q.stride(2) == k.stride(2) == v.stride(2) == 1, "head_dim must be contiguous"
    assert cos_sin.dtype == torch.float32 and cos_sin.is_contiguous() and cos_sin.shape[1] == head_dim
    assert q_norm_weight.dtype == k_norm_weight.dtype == q.dtype == k.dtype, "norm weights must be in q's dtype"
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.shape == v_cache.shape
    q_out = torch.empty((num_tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return q_out
    head_block, num_warps = (1, 1) if num_tokens < _MANY_TOKENS else (8, 4)
    grid = (num_tokens, triton.cdiv(num_q_heads, head_block) + triton.cdiv(num_kv_heads, head_block))
    use_pdl = pdl_enabled(q.device)
    _qk_norm_rope_store_kv_kernel[grid](
        q, k, v, q_norm_weight.contiguous(), k_norm_weight.contiguous(), cos_sin,
        positions.contiguous(), k_cache, v_cache, slot_mapping.contiguous(), q_out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), eps,
        NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_HALF=triton.next_power_of_2(head_dim // 2), HEAD_BLOCK=head_block, USE_PDL=use_pdl,
        num_warps=num_warps, launch_pdl=use_pdl,
        enable_fp_fusion=False,  # an FMA would skip the rounding of the products that HF does
    )
    return q_out


def qk_norm_rope_store_kv(
    q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions, k_cache, v_cache, slot_mapping, eps
) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D] -> normed+roped q [T, Hq, D] (new tensor).

    Writes normed+roped k and plain v into ``k_cache``/``v_cache`` [num_blocks, block_size, Hkv, D]
    at ``slot_mapping`` (slot = block * block_size + offset; slot < 0: not written).
    cos_sin comes from ``build_rope_cache``; positions index its rows.
    """
    fn = qk_norm_rope_store_kv_triton if use_triton(q) else qk_norm_rope_store_kv_reference
    return fn(q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions, k_cache, v_cache, slot_mapping, eps)
