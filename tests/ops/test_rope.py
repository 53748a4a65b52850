"""RoPE cache against transformers; the fused q/k-norm + RoPE + KV store against its reference,
and the reference against HF's Qwen3RMSNorm + apply_rotary_pos_emb.

Kernels run on CUDA when there is a GPU, else on CPU tensors in the Triton interpreter.
Tolerances (kernel vs reference): outputs are differences of rounded products, so they are
absolute, at the scale of the normed values (|x| <= ~5): fp32 1e-5; fp16 atol 2**-7 (2 ulp at 4)
with under 1% of elements differing at all (the kernel rounds where HF does); bf16 likewise on GPU
(atol 2**-4), but atol 2**-3 in the interpreter, which truncates fp32 -> bf16 casts instead of
rounding. v is copied, so the v cache must match exactly.
"""


import torch

# tests/conftest.py sets TRITON_INTERPRET=1 without a GPU, before ember.ops is imported.

import pytest
from transformers import Qwen3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm, Qwen3RotaryEmbedding, apply_rotary_pos_emb

import ember.ops.rope as rope
from ember.errors import ConfigError
from ember.ops.rope import build_rope_cache, qk_norm_rope_store_kv, qk_norm_rope_store_kv_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROUNDS_TO_NEAREST = {torch.float16} | ({torch.bfloat16} if DEVICE == "cuda" else set())
EPS = 1e-6
THETA = 1_000_000.0
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2**-9, atol=2**-7),
    torch.bfloat16: dict(rtol=2**-6, atol=2**-4) if DEVICE == "cuda" else dict(rtol=2**-5, atol=2**-3),
}


def hf_config(head_dim, rope_scaling, max_positions):
    return Qwen3Config(
        hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
        max_position_embeddings=max_positions, rope_theta=THETA,
        rope_scaling=None if rope_scaling is None else dict(rope_scaling),
    )


@pytest.mark.parametrize(
    "rope_scaling",
    [
        None,
        {"rope_type": "default"},
        {"rope_type": "linear", "factor": 2.0},
        YARN,
        {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},  # legacy key
        {**YARN, "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 16, "beta_slow": 2},
        {**YARN, "attention_factor": 1.25, "truncate": False},
    ],
)
def test_rope_cache_matches_transformers(rope_scaling):
    head_dim, max_positions = 128, 4096
    config = hf_config(head_dim, rope_scaling, max_positions)
    rotary = Qwen3RotaryEmbedding(config)
    cos_sin = build_rope_cache(head_dim, max_positions, THETA, rope_scaling, "cpu")
    assert cos_sin.shape == (max_positions, head_dim) and cos_sin.dtype == torch.float32
    # HF's cos/sin (fp32 input -> no cast) repeat the head_dim // 2 frequencies twice.
    hf_cos, hf_sin = rotary(torch.zeros(1), torch.arange(max_positions)[None])
    cos, sin = cos_sin.chunk(2, dim=-1)
    assert torch.equal(torch.cat((cos, cos), dim=-1), hf_cos[0])
    assert torch.equal(torch.cat((sin, sin), dim=-1), hf_sin[0])
    rope_type = config.rope_parameters["rope_type"]
    if rope_type != "default":
        inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[rope_type](config)
        assert torch.equal(cos[0], torch.full_like(cos[0], attention_factor))  # cos(0) * attention factor
        assert torch.equal(cos[1], inv_freq.cos() * attention_factor)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rope_scaling", [None, YARN])
def test_rope_cache_matches_transformers_on_gpu(rope_scaling):
    max_positions = 40960
    rotary = Qwen3RotaryEmbedding(hf_config(128, rope_scaling, max_positions)).to("cuda")
    hf_cos, hf_sin = rotary(torch.zeros(1, device="cuda"), torch.arange(max_positions, device="cuda")[None])
    cos, sin = build_rope_cache(128, max_positions, THETA, rope_scaling, "cuda").chunk(2, dim=-1)
    assert torch.equal(torch.cat((cos, cos), dim=-1), hf_cos[0])
    assert torch.equal(torch.cat((sin, sin), dim=-1), hf_sin[0])


def test_yarn_scaling_factor_value():
    cos_sin = build_rope_cache(128, 2, THETA, YARN, "cpu")
    assert cos_sin[0, 0].item() == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1.0)


@pytest.mark.parametrize("rope_scaling", [{"rope_type": "dynamic", "factor": 2.0}, {"type": "longrope"}])
def test_unsupported_rope_types_raise(rope_scaling):
    with pytest.raises(ConfigError):
        build_rope_cache(128, 16, THETA, rope_scaling, "cpu")


def make_inputs(num_tokens, num_q_heads, num_kv_heads, head_dim, dtype, device=DEVICE, max_position=4000,
                num_blocks=8, block_size=16, seed=0):
    """q/k/v as views of one merged qkv output, distinct random slots (some skipped), a dirty cache."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(num_tokens, (num_q_heads + 2 * num_kv_heads) * head_dim, generator=gen)
    qkv = qkv.to(device=device, dtype=dtype)
    q, k, v = qkv.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1)
    q = q.view(num_tokens, num_q_heads, head_dim)
    k, v = k.view(num_tokens, num_kv_heads, head_dim), v.view(num_tokens, num_kv_heads, head_dim)
    norm_weights = (1 + 0.2 * torch.randn(2, head_dim, generator=gen)).to(device=device, dtype=dtype)
    positions = torch.randint(0, max_position, (num_tokens,), generator=gen).to(device)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[::3] = -1  # skipped tokens: nothing written for them
    caches = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    caches = caches.to(device=device, dtype=dtype)
    return q, k, v, norm_weights[0], norm_weights[1], positions, caches[0], caches[1], slots.to(device)


def run_both(inputs, cos_sin, kernel=rope.qk_norm_rope_store_kv_triton):
    q, k, v, q_norm_weight, k_norm_weight, positions, k_cache, v_cache, slots = inputs
    caches = (k_cache.clone(), v_cache.clone(), k_cache.clone(), v_cache.clone())
    q_kernel = kernel(q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions, caches[0], caches[1], slots, EPS)
    q_ref = qk_norm_rope_store_kv_reference(
        q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions, caches[2], caches[3], slots, EPS
    )
    return (q_kernel, caches[0], caches[1]), (q_ref, caches[2], caches[3])


def assert_kernel_close(kernel_outputs, reference_outputs):
    for actual, expected in zip(kernel_outputs[:2], reference_outputs[:2]):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, **TOLERANCE[actual.dtype])
        if actual.dtype in ROUNDS_TO_NEAREST:
            assert (actual != expected).float().mean().item() < 0.01
    assert torch.equal(kernel_outputs[2], reference_outputs[2])  # v is a plain copy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 8, 2, 128), (7, 4, 2, 96), (33, 4, 1, 128)])  # T, Hq, Hkv, D
def test_kernel_matches_reference(shape, dtype):
    inputs = make_inputs(*shape, dtype, seed=shape[0])
    cos_sin = build_rope_cache(shape[3], 4096, THETA, None, DEVICE)
    assert_kernel_close(*run_both(inputs, cos_sin))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_matches_reference_with_yarn_and_int32_indices(dtype):
    q, k, v, qw, kw, positions, k_cache, v_cache, slots = make_inputs(9, 4, 2, 128, dtype, seed=3)
    inputs = (q, k, v, qw, kw, positions.to(torch.int32), k_cache, v_cache, slots.to(torch.int32))
    cos_sin = build_rope_cache(128, 4096, THETA, YARN, DEVICE)
    assert_kernel_close(*run_both(inputs, cos_sin))


def test_kernel_multi_head_programs(monkeypatch):
    """The prefill configuration (8 heads per program), with head counts that leave blocks partly empty."""
    monkeypatch.setattr(rope, "_MANY_TOKENS", 1)
    inputs = make_inputs(7, 10, 2, 128, torch.float16, seed=4)
    cos_sin = build_rope_cache(128, 4096, THETA, None, DEVICE)
    assert_kernel_close(*run_both(inputs, cos_sin))


def test_skipped_slots_leave_cache_untouched_and_empty_batch():
    inputs = make_inputs(5, 2, 2, 64, torch.float16, seed=5)
    q, k, v, qw, kw, positions, k_cache, v_cache, slots = inputs
    slots[:] = -1
    cos_sin = build_rope_cache(64, 4096, THETA, None, DEVICE)
    (q_out, k_after, v_after), (q_ref, _, _) = run_both(inputs, cos_sin)
    assert torch.equal(k_after, k_cache) and torch.equal(v_after, v_cache)
    torch.testing.assert_close(q_out, q_ref, **TOLERANCE[torch.float16])
    empty = rope.qk_norm_rope_store_kv_triton(q[:0], k[:0], v[:0], qw, kw, cos_sin, positions[:0],
                                              k_after, v_after, slots[:0], EPS)
    assert empty.shape == (0, 2, 64)


@pytest.mark.parametrize("rope_scaling", [None, YARN])
def test_reference_matches_hf_bit_for_bit_in_bf16(rope_scaling):
    num_tokens, num_q_heads, num_kv_heads, head_dim, max_positions = 11, 4, 2, 128, 4096
    q, k, v, qw, kw, positions, k_cache, v_cache, slots = make_inputs(
        num_tokens, num_q_heads, num_kv_heads, head_dim, torch.bfloat16, device="cpu", seed=6
    )
    cos_sin = build_rope_cache(head_dim, max_positions, THETA, rope_scaling, "cpu")
    q_out = qk_norm_rope_store_kv_reference(q, k, v, qw, kw, cos_sin, positions, k_cache, v_cache, slots, EPS)

    # Qwen3Attention.forward up to the cache update, on a batch of one sequence.
    config = hf_config(head_dim, rope_scaling, max_positions)
    q_norm, k_norm = Qwen3RMSNorm(head_dim, eps=EPS), Qwen3RMSNorm(head_dim, eps=EPS)
    q_norm, k_norm = q_norm.to(torch.bfloat16), k_norm.to(torch.bfloat16)
    with torch.no_grad():
        q_norm.weight.copy_(qw)
        k_norm.weight.copy_(kw)
        hf_q = q_norm(q[None]).transpose(1, 2)  # [1, Hq, T, D]
        hf_k = k_norm(k[None]).transpose(1, 2)
        cos, sin = Qwen3RotaryEmbedding(config)(hf_q, positions[None])
        hf_q, hf_k = apply_rotary_pos_emb(hf_q, hf_k, cos, sin)
    assert torch.equal(q_out, hf_q[0].transpose(0, 1))
    written = slots >= 0
    block_size = k_cache.shape[1]
    cached = (slots[written] // block_size, slots[written] % block_size)
    assert torch.equal(k_cache[cached], hf_k[0].transpose(0, 1)[written])
    assert torch.equal(v_cache[cached], v[written])


def test_dispatcher_uses_reference_on_cpu():
    inputs = make_inputs(3, 2, 1, 64, torch.bfloat16, device="cpu")
    cos_sin = build_rope_cache(64, 4096, THETA, None, "cpu")
    (q_out, k_after, v_after), (q_ref, k_ref, v_ref) = run_both(inputs, cos_sin, kernel=qk_norm_rope_store_kv)
    assert torch.equal(q_out, q_ref) and torch.equal(k_after, k_ref) and torch.equal(v_after, v_ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rope_scaling", [None, YARN])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_tokens", [1, 63, 300, 4096])
def test_kernel_on_gpu_at_qwen3_shapes(num_tokens, dtype, rope_scaling):
    inputs = make_inputs(num_tokens, 32, 8, 128, dtype, device="cuda", max_position=32768,
                         num_blocks=512, block_size=16, seed=num_tokens)
    cos_sin = build_rope_cache(128, 32768, THETA, rope_scaling, "cuda")
    assert_kernel_close(*run_both(inputs, cos_sin, kernel=qk_norm_rope_store_kv))
