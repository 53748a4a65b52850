"""Paged decode attention (split-K): the Triton kernels against the PyTorch reference, and the
fused q/k-norm + RoPE + KV store + attention against the two kernels it replaces (bitwise in the interpreter, close on the GPU).

Without a GPU the kernels run on CPU tensors in Triton's interpreter (slow: small shapes);
with one, the same cases run compiled on CUDA, plus realistic shapes marked ``gpu``.
"""

import pytest
import torch
from paged_attention_cases import (
    DEVICE,
    HAS_CUDA,
    assert_close,
    assert_not_specialised,
    make_decode,
    make_paged_kv,
    make_scratch,
)

from ember.ops import decode_attention
from ember.ops.decode_attention import (
    decode_merge_mode,
    decode_num_splits,
    decode_split_counts,
    norm_rope_decode_attention,
    norm_rope_decode_attention_reference,
    norm_rope_decode_attention_triton,
    paged_decode_attention,
    paged_decode_attention_reference,
    paged_decode_attention_triton,
)
from ember.ops.rope import build_rope_cache, qk_norm_rope_store_kv_triton


def test_kernel_accepts_strided_q():
    # The model slices q out of a fused qkv projection: token and head strides are not q's own.
    (q, *rest), _ = make_decode([7, 20], 4, 2, 32, torch.float16, block_size=8, seed=19)
    q_view = torch.cat([q, torch.randn_like(q)], dim=1)[:, :4]
    assert not q_view.is_contiguous()
    assert_close(paged_decode_attention_triton(q_view, *rest, num_splits=2),
                 paged_decode_attention_reference(q, *rest), torch.float16)


# ---------------------------------------------------------------- decode kernel
@pytest.mark.parametrize("num_splits", [None, 1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_decode_kernel_lengths_and_splits(num_splits, dtype):
    block_size = 16  # lengths: 1, block_size - 1, block_size, many blocks; 8 splits > blocks of most
    args, _ = make_decode([1, 15, 16, 150], 8, 2, 32, dtype, block_size, seed=7)
    out = paged_decode_attention_triton(*args, num_splits=num_splits)
    assert_close(out, paged_decode_attention_reference(*args), dtype)


@pytest.mark.parametrize("num_q_heads,num_kv_heads", [(4, 4), (8, 4), (8, 2), (16, 2)])
def test_decode_kernel_gqa(num_q_heads, num_kv_heads):
    args, _ = make_decode([9, 70], num_q_heads, num_kv_heads, 32, torch.float16, block_size=8, seed=11)
    out = paged_decode_attention_triton(*args, num_splits=2)
    assert_close(out, paged_decode_attention_reference(*args), torch.float16)


def test_decode_kernel_head_dim_128_default_splits():
    args, _ = make_decode([33, 700], 4, 1, 128, torch.bfloat16, block_size=32, seed=13)
    assert decode_num_splits(2, 1, args[3].shape[1], 32) > 1  # exercises the reducer
    assert_close(paged_decode_attention_triton(*args), paged_decode_attention_reference(*args), torch.bfloat16)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_decode_kernel_preallocated_workspace_and_empty_sequence(num_splits):
    # context_len 0 (e.g. a padded CUDA-graph slot) gives zeros; a NaN-poisoned, oversized workspace is fine.
    args, _ = make_decode([0, 40], 4, 2, 32, torch.float32, block_size=8, seed=17)
    workspace, counters = make_scratch(2, 4, 2, 32, num_splits, pad=100)
    out = paged_decode_attention_triton(*args, workspace=workspace, num_splits=num_splits, counters=counters)
    assert_close(out, paged_decode_attention_reference(*args), torch.float32)
    assert (out[0] == 0).all()
    assert (counters == 0).all()


@pytest.mark.parametrize("impl", [paged_decode_attention_triton, paged_decode_attention_reference])
def test_decode_into_leading_rows_of_out(impl):
    # A mixed step writes its decode rows' output into the first rows of the step's output.
    args, _ = make_decode([9, 70], 4, 2, 32, torch.float32, block_size=8, seed=29)
    step_out = torch.full((5, 4, 32), 7.0, device=args[0].device)
    assert impl(*args, num_splits=2, out=step_out[:2]).data_ptr() == step_out.data_ptr()
    assert_close(step_out[:2], paged_decode_attention_reference(*args), torch.float32)
    assert (step_out[2:] == 7.0).all()


@pytest.mark.parametrize("num_splits", [1, 4, 16])
def test_decode_kernel_mixed_lengths_mostly_empty_splits(num_splits):
    # Padding rows (length 0) among contexts far shorter than the split range: with 16 splits,
    # length 5 fills one split of 64 keys and 300 fills five; the empty splits must still be
    # counted, or no program of the group would merge it. Length 1000 fills all 16.
    ctx_lens = [0, 1, 5, 64, 65, 0, 300, 1000]
    args, _ = make_decode(ctx_lens, 4, 2, 32, torch.float32, block_size=16, seed=31)
    workspace, counters = make_scratch(len(ctx_lens), 4, 2, 32, num_splits)
    out = paged_decode_attention_triton(*args, workspace=workspace, num_splits=num_splits, counters=counters)
    assert_close(out, paged_decode_attention_reference(*args), torch.float32)
    assert (out[0] == 0).all() and (out[5] == 0).all()
    assert (counters == 0).all()


@pytest.mark.parametrize("merge_elems", [64, 192])
def test_decode_kernel_merge_in_several_steps(monkeypatch, merge_elems):
    # Realistic head_dim and group sizes merge up to 64 splits in several steps; force that at test
    # sizes: 1 split (64 elements) or 2 (192 -> rounded down to a power of two) per step.
    monkeypatch.setattr(decode_attention, "DECODE_MERGE_ELEMS", merge_elems)
    args, _ = make_decode([1000, 0, 130, 7], 4, 2, 32, torch.float32, block_size=16, seed=33)
    workspace, counters = make_scratch(4, 4, 2, 32, 16)
    out = paged_decode_attention_triton(*args, workspace=workspace, num_splits=16, counters=counters)
    assert_close(out, paged_decode_attention_reference(*args), torch.float32)
    assert (counters == 0).all()


@pytest.mark.parametrize("num_splits", [1, 2, 8])
def test_decode_kernel_repeated_calls_share_workspace_and_counters(num_splits):
    # As in captured decode steps: every layer, then every replay (and every bucket) reuses one
    # workspace and one set of counters, with new lengths, tables and q. Each launch must leave
    # the counters at zero, or the next one would merge too early or never.
    workspace, counters = make_scratch(4, 8, 2, 32, num_splits)
    for seed, ctx_lens in enumerate([[0, 150, 7, 64], [90, 0, 1, 129], [200, 3], [0]]):
        args, _ = make_decode(ctx_lens, 8, 2, 32, torch.float16, block_size=16, seed=40 + seed)
        expected = paged_decode_attention_reference(*args)
        for _ in range(2):
            out = paged_decode_attention_triton(*args, workspace=workspace, num_splits=num_splits, counters=counters)
            assert_close(out, expected, torch.float16)
            assert (counters == 0).all()


@pytest.mark.parametrize("merge", ["kernel", "launch"])
@pytest.mark.parametrize("min_tokens", [64, 128, 256])
def test_decode_kernel_merge_modes_and_coarse_splits(merge, min_tokens):
    # Both merge paths, and splits coarser than the lengths ask for: 8 splits of at least
    # min_tokens keys leave the tail splits of short rows empty, and the counters must still
    # come back to zero (in "launch" mode nothing touches them).
    ctx_lens = [0, 1, 64, 65, 300, 1000, 129]
    args, _ = make_decode(ctx_lens, 8, 2, 32, torch.float32, block_size=16, seed=43)
    workspace, counters = make_scratch(len(ctx_lens), 8, 2, 32, 8)
    for _ in range(2):  # a second launch reuses the scratch, as graph replays do
        out = paged_decode_attention_triton(*args, workspace=workspace, num_splits=8, counters=counters,
                                            min_tokens_per_split=min_tokens, merge=merge)
        assert_close(out, paged_decode_attention_reference(*args), torch.float32)
        assert (out[0] == 0).all() and (counters == 0).all()


def test_decode_kernel_rejects_partial_tile_splits():
    args, _ = make_decode([10], 4, 2, 32, torch.float32, block_size=16)
    with pytest.raises(AssertionError, match="whole key tiles"):
        paged_decode_attention_triton(*args, num_splits=2, min_tokens_per_split=100)


def test_decode_kernel_single_split_touches_no_scratch():
    args, _ = make_decode([0, 9, 70], 8, 2, 32, torch.float16, block_size=8, seed=37)
    workspace, counters = make_scratch(3, 8, 2, 32, 1)
    counters.fill_(7)
    out = paged_decode_attention_triton(*args, workspace=workspace, num_splits=1, counters=counters)
    assert_close(out, paged_decode_attention_reference(*args), torch.float16)
    assert workspace.isnan().all() and (counters == 7).all()


def test_split_heuristic_uses_shapes_only():
    assert decode_num_splits(1, 8, 512, 16) == 64  # B=1, long capacity: fill the GPU
    assert decode_num_splits(8, 8, 512, 16) == 8
    assert decode_num_splits(64, 8, 512, 16) == 1  # big batch: already enough programs
    assert decode_num_splits(1, 8, 4, 16) == 1  # tiny capacity: nothing to split
    assert decode_num_splits(1, 1, 10**6, 16) == decode_attention.DECODE_MAX_SPLITS


def test_splits_fitted_to_the_longest_context():
    # No more splits than the longest row fills with whole tiles (a power of two, at least 8):
    # capacity 8,192 tokens at batch 1 would give 64 splits, 62 of them empty at 128 tokens.
    fitted = [decode_num_splits(1, 8, 512, 16, n) for n in (0, 1, 128, 512, 513, 1024, 2048, 4096, 8192)]
    assert fitted == [8, 8, 8, 8, 16, 16, 32, 64, 64]
    assert decode_num_splits(1, 8, 512, 16, 10**6) == 64  # never more than without the length
    assert decode_num_splits(32, 8, 512, 16, 100) == 2  # big batches: unchanged
    assert decode_num_splits(1, 8, 4, 16, 60) == 1  # tiny capacity: still one
    assert decode_split_counts(1, 8, 512, 16) == [8, 16, 32, 64]
    assert decode_split_counts(4, 8, 512, 16) == [8, 16]
    assert decode_split_counts(8, 8, 512, 16) == [8]
    assert decode_split_counts(1, 8, 4, 16) == [1]
    assert decode_split_counts(1, 8, 40, 16) == [8, 10]  # capacity 640 tokens: 10 splits at most


def test_dispatch_uses_reference_on_cpu_tensors():
    if HAS_CUDA:
        pytest.skip("CPU-only dispatch check")
    args, _ = make_decode([5], 2, 1, 32, torch.float32, block_size=8)
    torch.testing.assert_close(paged_decode_attention(*args), paged_decode_attention_reference(*args))


def test_kernel_does_not_specialise_on_the_block_table_width():
    assert_not_specialised(decode_attention._decode_split_kernel, "stride_bt_seq")  # see test_attention.py


# ---------------------------------------------------------------- fused q/k-norm + RoPE + KV store
EPS = 1e-6


def make_norm_rope_decode(ctx_lens, num_q_heads, num_kv_heads, head_dim, dtype, block_size, seed=0):
    """Decode inputs as the layer passes them: raw q/k/v as strided views of one qkv row per
    sequence, norm weights, cos_sin, positions ctx_len - 1 and the new token's slot (-1 and
    position 0 for a padding row, ctx_len 0). Returns (rope_args, attention_args); the caches
    in them are the ones to compare (clone before a second run).

    Raw q and k are multiples of 1/8 up to 3 (fill_exact_sums): their squares then sum exactly in
    fp32 in any order. Compiled, the two kernels reduce a head's squares in different orders
    (their tiles get different layouts), which with general values rounds the variance
    differently now and then. (On an H200 some K values still came out one rounding apart with
    these inputs: see assert_matches_unfused.)"""
    k_cache, v_cache, block_tables, _ = make_paged_kv(ctx_lens, block_size, num_kv_heads, head_dim, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    width = (num_q_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(len(ctx_lens), width, generator=gen) * 3
    fill_exact_sums(qkv[:, : (num_q_heads + num_kv_heads) * head_dim], gen)
    qkv = qkv.to(dtype).to(DEVICE)
    q, k, v = qkv.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q = q.view(-1, num_q_heads, head_dim)
    k, v = k.view(-1, num_kv_heads, head_dim), v.view(-1, num_kv_heads, head_dim)
    q_norm_weight, k_norm_weight = (1 + 0.1 * torch.randn(2, head_dim, generator=gen)).to(dtype).to(DEVICE)
    cos_sin = build_rope_cache(head_dim, max(ctx_lens) + 1, 1_000_000.0, None, DEVICE)
    positions = torch.tensor([max(n - 1, 0) for n in ctx_lens], device=DEVICE)
    tables = block_tables.cpu()
    slots = torch.tensor([-1 if n == 0 else int(tables[b, (n - 1) // block_size]) * block_size + (n - 1) % block_size
                          for b, n in enumerate(ctx_lens)], device=DEVICE)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32, device=DEVICE)
    rope_args = (q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions, k_cache, v_cache, slots, EPS)
    return rope_args, (block_tables, ctx, head_dim**-0.5)


def fill_exact_sums(x, gen=None):
    """x[:] = random multiples of 1/8 in [-3, 3], exact in every dtype, as are the sums of their squares."""
    x.copy_(torch.randint(-24, 25, x.shape, generator=gen).to(x.dtype) / 8)


def with_caches(rope_args, k_cache, v_cache):
    return (*rope_args[:7], k_cache, v_cache, *rope_args[9:])


def run_unfused(rope_args, attn_args, **kwargs):
    """The two kernels the fused op replaces, on copies of the caches: (out, k_cache, v_cache)."""
    k_cache, v_cache = rope_args[7].clone(), rope_args[8].clone()
    q = qk_norm_rope_store_kv_triton(*with_caches(rope_args, k_cache, v_cache))
    return paged_decode_attention_triton(q, k_cache, v_cache, *attn_args, **kwargs), k_cache, v_cache


def run_fused(rope_args, attn_args, **kwargs):
    k_cache, v_cache = rope_args[7].clone(), rope_args[8].clone()
    out = norm_rope_decode_attention_triton(*with_caches(rope_args, k_cache, v_cache), *attn_args, **kwargs)
    return out, k_cache, v_cache


def assert_matches_unfused(fused, unfused):
    """(out, k_cache, v_cache) equal bitwise in the interpreter. Compiled, only v_cache is (a copy):
    the fused launch's rope and attention are compiled together, and on an H200 about 1 in 1,000 of
    the new K values and ~5-10% of the bf16 outputs came out one rounding apart from the unfused
    kernels' even on inputs whose sums are exact (compiled fp32 also runs without FMA contraction
    for the rope's sake); there they must be close."""
    for name, a, b in zip(("v_cache", "k_cache", "out"), (fused[2], fused[1], fused[0]),
                          (unfused[2], unfused[1], unfused[0])):
        if name != "v_cache" and a.is_cuda:
            assert_close(a, b, a.dtype)
        else:
            assert torch.equal(a, b), f"{name}: {(a != b).sum().item()} elements differ"


# Mixed lengths: a padding row (slot -1, ctx_len 0), ctx_len 1, the new token last of the first
# key tile, first of the second, in the third (with 3 splits of >= 64 keys: the new token in split
# 0, 1 and 2, and empty tail splits).
FUSED_CTX_LENS = [0, 1, 64, 65, 150]


# Each dtype with GQA groups 1 and 4, one split and both merge modes (the interpreter is slow:
# a covering set, not the full product).
@pytest.mark.parametrize("dtype,num_q_heads,num_kv_heads,num_splits,merge", [
    (torch.float32, 2, 2, 1, None),
    (torch.bfloat16, 4, 1, 1, None),
    (torch.float32, 8, 2, 3, "kernel"),
    (torch.bfloat16, 2, 2, 3, "kernel"),
    (torch.bfloat16, 4, 1, 3, "launch"),
    (torch.float32, 1, 1, 3, "launch"),
])
@pytest.mark.parametrize("preload_min_splits", [1, 1 << 20], ids=["preload", "wait-first"])
def test_fused_norm_rope_equals_the_two_kernels(dtype, num_q_heads, num_kv_heads, num_splits, merge,
                                                 preload_min_splits, monkeypatch):
    # Both forms of the split kernel: the first key tile loaded before the PDL wait and the new
    # token's row patched in (the engine's small batches), or every tile loaded after the store.
    monkeypatch.setattr(decode_attention, "DECODE_PRELOAD_MIN_SPLITS", preload_min_splits)
    rope_args, attn_args = make_norm_rope_decode(FUSED_CTX_LENS, num_q_heads, num_kv_heads, 32, dtype,
                                                 block_size=16, seed=51)
    workspace, counters = make_scratch(len(FUSED_CTX_LENS), num_q_heads, num_kv_heads, 32, num_splits)
    scratch = dict(workspace=workspace, counters=counters, num_splits=num_splits, merge=merge)
    fused = run_fused(rope_args, attn_args, **scratch)
    assert (counters == 0).all()
    assert_matches_unfused(fused, run_unfused(rope_args, attn_args, **scratch))
    assert (fused[0][0] == 0).all()  # the padding row
    # The reference, on its own copies of the caches.
    k_cache, v_cache = rope_args[7].clone(), rope_args[8].clone()
    expected = norm_rope_decode_attention_reference(*with_caches(rope_args, k_cache, v_cache), *attn_args)
    atol = 2**-3 if dtype == torch.bfloat16 else 1e-5  # the interpreter truncates bf16: see test_rope.py
    torch.testing.assert_close(fused[1], k_cache, atol=atol, rtol=0)
    assert torch.equal(fused[2], v_cache)
    assert_close(fused[0], expected, dtype)


def test_fused_norm_rope_default_splits_and_dispatch():
    # The engine's call: default split count and merge mode (several splits here), through the
    # dispatcher; the caches differ from the inputs exactly at the new tokens' slots.
    ctx_lens = [3, 0, 130]
    rope_args, attn_args = make_norm_rope_decode(ctx_lens, 4, 2, 32, torch.float32, block_size=8, seed=53)
    assert decode_num_splits(3, 2, attn_args[0].shape[1], 8) > 1
    fused = run_fused(rope_args, attn_args)
    assert_matches_unfused(fused, run_unfused(rope_args, attn_args))
    slots = rope_args[9]
    changed = (fused[1] != rope_args[7]).flatten(0, 1).any(-1).any(-1).nonzero().flatten()
    assert changed.tolist() == sorted(slots[slots >= 0].tolist())
    k_cache, v_cache = rope_args[7].clone(), rope_args[8].clone()
    out = norm_rope_decode_attention(*with_caches(rope_args, k_cache, v_cache), *attn_args)
    if not HAS_CUDA:  # the reference on CPU tensors
        assert_close(out, fused[0], torch.float32)
        torch.testing.assert_close(k_cache, fused[1], atol=1e-5, rtol=0)
        assert torch.equal(v_cache, fused[2])
    else:
        assert_matches_unfused((out, k_cache, v_cache), fused)


def test_layer_decode_runs_the_fused_kernel(monkeypatch):
    # PagedAttention's decode branch passes the raw q/k/v views and the metadata in the right
    # places: with the kernels forced on (CPU tensors would take the references), it gives the
    # two kernels' results bitwise.
    from ember.layers.attention import AttentionMetadata, PagedAttention

    ctx_lens = [0, 9, 70]
    rope_args, (tables, ctx, scale) = make_norm_rope_decode(ctx_lens, 4, 2, 32, torch.bfloat16, block_size=8,
                                                            seed=57)
    q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions, k_cache, v_cache, slots, eps = rope_args
    layer = PagedAttention(4, 2, 32, eps)
    layer.k_cache, layer.v_cache = k_cache.clone(), v_cache.clone()
    meta = AttentionMetadata(is_prefill=False, slot_mapping=slots, context_lens=ctx, block_tables=tables,
                             decode_num_splits=2)
    monkeypatch.setattr(decode_attention, "use_triton", lambda t: True)
    out = layer(q.flatten(1), k.flatten(1), v.flatten(1), q_norm_weight, k_norm_weight, cos_sin, positions, meta)
    expected = run_unfused(rope_args, (tables, ctx, scale), num_splits=2)
    assert_matches_unfused((out.view(-1, 4, 32), layer.k_cache, layer.v_cache), expected)


# ---------------------------------------------------------------- realistic shapes on a GPU
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
GPU_DTYPES = [torch.bfloat16, torch.float16]
RANDOM_CONTEXTS_32 = torch.randint(1, 8193, (32,), generator=torch.Generator().manual_seed(0)).tolist()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("ctx_lens", [[8192], [1, 15, 16, 17, 8192], RANDOM_CONTEXTS_32])
def test_gpu_decode_realistic(dtype, ctx_lens):
    args, _ = make_decode(ctx_lens, 32, 8, 128, dtype, block_size=16, seed=23)
    assert_close(paged_decode_attention(*args), paged_decode_attention_reference(*args), dtype)


@pytest.mark.gpu
@needs_gpu
def test_gpu_decode_cuda_graph_replay():
    # Capture at full length, then change lengths, tables and q in place: nothing is re-sized.
    # Three launches per graph share the workspace and counters, as the layers of a decode step do.
    args, _ = make_decode([8192] * 4, 32, 8, 128, torch.bfloat16, block_size=16, seed=29)
    q, k_cache, v_cache, block_tables, ctx, scale = args
    num_splits = decode_num_splits(4, 8, block_tables.shape[1], 16)
    assert num_splits > 1
    workspace, counters = make_scratch(4, 32, 8, 128, num_splits)
    qs = [q, q.flip(1), q * 2]
    scratch = {"workspace": workspace, "counters": counters}
    paged_decode_attention(*args, **scratch)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [paged_decode_attention(q_i, *args[1:], **scratch) for q_i in qs]
    for lens in ([17, 8000, 1, 4096], [0, 65, 8192, 3]):
        ctx.copy_(torch.tensor(lens, dtype=torch.int32))
        block_tables.copy_(block_tables.flip(0))
        q.normal_()
        qs[1].copy_(q.flip(1))
        qs[2].copy_(q * 2)
        graph.replay()
        for q_i, out in zip(qs, outs):
            assert_close(out, paged_decode_attention_reference(q_i, *args[1:]), torch.bfloat16)
        assert (counters == 0).all()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("ctx_lens", [[8192], [5000, 0, 33, 8192], RANDOM_CONTEXTS_32[:8]])
def test_gpu_decode_single_launch_merge_is_race_free(ctx_lens):
    # The last-arriving split merges the others' partials: a missing release/acquire would show
    # now and then as a partial left over from the previous launch. Launches alternate between
    # two queries so such a leftover differs; the merge is deterministic, so every run must be
    # bitwise identical to the first run of its query.
    (q, *rest), _ = make_decode(ctx_lens, 32, 8, 128, torch.bfloat16, block_size=16, seed=31)
    num_splits = decode_num_splits(len(ctx_lens), 8, rest[2].shape[1], 16)
    assert num_splits > 1
    workspace, counters = make_scratch(len(ctx_lens), 32, 8, 128, num_splits)
    qs = [q, torch.randn_like(q)]
    firsts = [paged_decode_attention(q_i, *rest, workspace=workspace, counters=counters) for q_i in qs]
    for q_i, first in zip(qs, firsts):
        assert_close(first, paged_decode_attention_reference(q_i, *rest), torch.bfloat16)
    outs = [paged_decode_attention(qs[i % 2], *rest, workspace=workspace, counters=counters) for i in range(400)]
    torch.cuda.synchronize()
    assert all(torch.equal(out, firsts[i % 2]) for i, out in enumerate(outs))
    assert (counters == 0).all()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("num_q_heads", [16, 32])  # Qwen3-0.6B and -8B: 8 kv heads, head_dim 128
def test_gpu_fused_norm_rope_matches_and_graph_replay(num_q_heads):
    # Eagerly at one split, the engine's split count and merge mode, and the other merge mode.
    ctx_lens = [8192, 0, 1, 16, 17, 64, 65, 3000]
    rope_args, attn_args = make_norm_rope_decode(ctx_lens, num_q_heads, 8, 128, torch.bfloat16, 16, seed=61)
    auto = decode_num_splits(len(ctx_lens), 8, attn_args[0].shape[1], 16)
    assert auto > 1
    other = "kernel" if decode_merge_mode(auto) == "launch" else "launch"
    for num_splits, merge in [(1, None), (auto, None), (auto, other)]:
        assert_matches_unfused(run_fused(rope_args, attn_args, num_splits=num_splits, merge=merge),
                               run_unfused(rope_args, attn_args, num_splits=num_splits, merge=merge))

    # General raw values: the variance may round differently now and then (see
    # make_norm_rope_decode), so only a few elements (1 ulp in k) may differ; v is a copy.
    q, k = rope_args[0], rope_args[1]
    q.normal_().mul_(3)
    k.normal_().mul_(3)
    fused, unfused = run_fused(rope_args, attn_args), run_unfused(rope_args, attn_args)
    assert torch.equal(fused[2], unfused[2])
    assert (fused[1] != unfused[1]).float().mean().item() < 1e-2  # k: a few last-bit differences
    for a, b in zip(fused[:2], unfused[:2]):
        assert_close(a, b, torch.bfloat16)

    # CUDA graphs, as the decode step runs them: the two kernels and the fused op each captured
    # on their own caches, sharing the inputs, which change in place between replays.
    ctx_lens = [8192] * 4
    rope_args, (tables, ctx, scale) = make_norm_rope_decode(ctx_lens, num_q_heads, 8, 128, torch.bfloat16, 16,
                                                            seed=67)
    q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions, k_cache, v_cache, slots, eps = rope_args
    num_splits = decode_num_splits(4, 8, tables.shape[1], 16)
    caches = {name: (k_cache.clone(), v_cache.clone()) for name in ("unfused", "fused")}
    scratch = {name: dict(zip(("workspace", "counters"), make_scratch(4, num_q_heads, 8, 128, num_splits)),
                          num_splits=num_splits) for name in caches}

    def unfused_step():
        q_normed = qk_norm_rope_store_kv_triton(q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions,
                                                *caches["unfused"], slots, eps)
        return paged_decode_attention_triton(q_normed, *caches["unfused"], tables, ctx, scale, **scratch["unfused"])

    def fused_step():
        return norm_rope_decode_attention_triton(q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions,
                                                 *caches["fused"], slots, eps, tables, ctx, scale, **scratch["fused"])

    unfused_step(), fused_step()  # compile outside the capture
    graphs = {name: torch.cuda.CUDAGraph() for name in caches}
    outs = {}
    for name, step in (("unfused", unfused_step), ("fused", fused_step)):
        with torch.cuda.graph(graphs[name]):
            outs[name] = step()
    gen = torch.Generator().manual_seed(71)
    for lens in ([17, 8000, 1, 4096], [0, 65, 8192, 3], [64, 1, 0, 129]):
        tables.copy_(tables.flip(0))
        ctx.copy_(torch.tensor(lens, dtype=torch.int32))
        positions.copy_((ctx.long() - 1).clamp(min=0))
        rows = tables[torch.arange(4, device=DEVICE), positions // 16].long()
        slots.copy_(torch.where(ctx > 0, rows * 16 + positions % 16, -1))
        fill_exact_sums(q, gen)
        fill_exact_sums(k, gen)
        v.normal_()
        for graph in graphs.values():
            graph.replay()
        assert_matches_unfused((outs["fused"], *caches["fused"]), (outs["unfused"], *caches["unfused"]))
        assert all((s["counters"] == 0).all() for s in scratch.values())
