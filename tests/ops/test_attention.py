"""Paged prefill/decode attention: Triton kernels against the PyTorch references.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (slow: small shapes);
with one, the same cases run compiled on CUDA, plus realistic shapes marked ``gpu``.
"""

import pytest
import torch
import torch.nn.functional as F

from ember.ops import attention
from ember.ops.attention import (
    decode_counters_numel,
    decode_num_splits,
    decode_workspace_numel,
    paged_decode_attention,
    paged_decode_attention_reference,
    paged_decode_attention_triton,
    paged_prefill_attention,
    paged_prefill_attention_reference,
    paged_prefill_attention_triton,
)

HAS_CUDA = torch.cuda.is_available()  # without one, tests/conftest.py has set TRITON_INTERPRET=1
DEVICE = "cuda" if HAS_CUDA else "cpu"
# |kernel - reference|: fp32 dots are exact ("ieee"); 16-bit runs round P to q's dtype on GPU.
TOLERANCES = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def make_paged_kv(ctx_lens, block_size, num_kv_heads, head_dim, dtype, seed=0, device=DEVICE):
    """Random cache with each sequence's blocks scattered through a shuffled pool.

    Returns (k_cache, v_cache, block_tables, dense) where dense[b] = (K, V) [ctx, Hkv, D]. The whole
    pool is random, so reading a wrong block or a slot past the end shows; table entries past a
    sequence's blocks are garbage (-1 or some other sequence's block).
    """
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in ctx_lens]
    num_blocks = sum(blocks_per_seq) + 3
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(dtype)
    v_cache = torch.randn(shape, generator=gen).to(dtype)
    pool = torch.randperm(num_blocks, generator=gen).tolist()
    width = max(blocks_per_seq) + 2
    block_tables = torch.randint(-1, num_blocks, (len(ctx_lens), width), generator=gen, dtype=torch.int32)
    dense = []
    for b, (n, nb) in enumerate(zip(ctx_lens, blocks_per_seq)):
        ids = [pool.pop() for _ in range(nb)]
        block_tables[b, :nb] = torch.tensor(ids, dtype=torch.int32)
        dense.append(tuple(c[ids].reshape(-1, num_kv_heads, head_dim)[:n].to(device) for c in (k_cache, v_cache)))
    return k_cache.to(device), v_cache.to(device), block_tables.to(device), dense


def make_prefill(q_lens, ctx_lens, num_q_heads, num_kv_heads, head_dim, dtype, block_size, seed=0):
    k_cache, v_cache, block_tables, dense = make_paged_kv(ctx_lens, block_size, num_kv_heads, head_dim, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(sum(q_lens), num_q_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    cu = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0).to(torch.int32).to(DEVICE)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32, device=DEVICE)
    args = (q, k_cache, v_cache, cu, ctx, block_tables, head_dim**-0.5, max(q_lens))
    return args, dense


def make_decode(ctx_lens, num_q_heads, num_kv_heads, head_dim, dtype, block_size, seed=0):
    k_cache, v_cache, block_tables, dense = make_paged_kv(ctx_lens, block_size, num_kv_heads, head_dim, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(len(ctx_lens), num_q_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32, device=DEVICE)
    return (q, k_cache, v_cache, block_tables, ctx, head_dim**-0.5), dense


def make_scratch(batch_size, num_q_heads, num_kv_heads, head_dim, num_splits, pad=0):
    """A NaN-poisoned decode workspace and zeroed counters, as the model runner preallocates them
    (``pad`` elements larger: a runner sizes them for its largest bucket)."""
    numel = decode_workspace_numel(batch_size, num_q_heads, head_dim, num_splits) + pad
    workspace = torch.full((numel,), float("nan"), device=DEVICE)
    counters = torch.zeros(decode_counters_numel(batch_size, num_kv_heads) + pad, dtype=torch.int32, device=DEVICE)
    return workspace, counters


def assert_close(out, ref, dtype):
    assert out.dtype == ref.dtype == dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref.float(), atol=TOLERANCES[dtype], rtol=TOLERANCES[dtype])


# ---------------------------------------------------------------- the references, against dense SDPA
@pytest.mark.parametrize("group", [1, 4])
def test_prefill_reference_matches_dense_sdpa(group):
    q_lens, ctx_lens = [1, 5, 17, 0, 9], [1, 12, 17, 4, 40]
    (q, *rest), dense = make_prefill(q_lens, ctx_lens, 2 * group, 2, 32, torch.float32, block_size=8)
    out = paged_prefill_attention_reference(q, *rest)
    start = 0
    for (keys, values), q_len, ctx_len in zip(dense, q_lens, ctx_lens):
        q_b = q[start: start + q_len].double().transpose(0, 1)  # [H, q_len, D]
        visible = torch.arange(ctx_len)[None, :] <= torch.arange(ctx_len - q_len, ctx_len)[:, None]
        visible = visible.to(q.device)
        ref = F.scaled_dot_product_attention(
            q_b, keys.double().transpose(0, 1).repeat_interleave(group, 0),
            values.double().transpose(0, 1).repeat_interleave(group, 0), attn_mask=visible,
            scale=32**-0.5)
        torch.testing.assert_close(out[start: start + q_len].double(), ref.transpose(0, 1), atol=1e-5, rtol=1e-5)
        start += q_len


def test_decode_reference_is_prefill_of_one_token():
    args, _ = make_decode([1, 7, 8, 30], 8, 2, 32, torch.float32, block_size=8)
    q, k_cache, v_cache, block_tables, ctx, scale = args
    cu = torch.arange(len(ctx) + 1, dtype=torch.int32, device=DEVICE)
    expected = paged_prefill_attention_reference(q, k_cache, v_cache, cu, ctx, block_tables, scale, 1)
    torch.testing.assert_close(paged_decode_attention_reference(*args), expected)


# ---------------------------------------------------------------- prefill kernel
PREFILL_CASES = {  # name: (q_lens, ctx_lens, Hq, Hkv, D, block_size)
    "ragged": ([1, 5, 17, 33], [1, 5, 17, 33], 4, 2, 32, 16),
    "prefix_cached": ([3, 0, 20, 1], [40, 7, 90, 129], 4, 4, 32, 8),
    "two_q_blocks_long_prefix": ([100], [230], 2, 1, 64, 32),
}


@pytest.mark.parametrize("name", list(PREFILL_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_prefill_kernel(name, dtype):
    q_lens, ctx_lens, num_q_heads, num_kv_heads, head_dim, block_size = PREFILL_CASES[name]
    args, _ = make_prefill(q_lens, ctx_lens, num_q_heads, num_kv_heads, head_dim, dtype, block_size)
    assert_close(paged_prefill_attention_triton(*args), paged_prefill_attention_reference(*args), dtype)


@pytest.mark.parametrize("num_q_heads,num_kv_heads", [(4, 4), (8, 4), (8, 2), (16, 2)])
def test_prefill_kernel_gqa(num_q_heads, num_kv_heads):
    args, _ = make_prefill([6, 19], [6, 27], num_q_heads, num_kv_heads, 32, torch.float16, block_size=8, seed=3)
    assert_close(paged_prefill_attention_triton(*args), paged_prefill_attention_reference(*args), torch.float16)


def test_prefill_kernel_head_dim_128():
    args, _ = make_prefill([9, 70], [9, 75], 4, 2, 128, torch.bfloat16, block_size=16, seed=5)
    assert_close(paged_prefill_attention_triton(*args), paged_prefill_attention_reference(*args), torch.bfloat16)


def test_kernels_accept_strided_q():
    # The model slices q out of a fused qkv projection: token and head strides are not q's own.
    (q, *rest), _ = make_prefill([7, 12], [7, 20], 4, 2, 32, torch.float16, block_size=8, seed=19)
    q_view = torch.cat([q, torch.randn_like(q)], dim=1)[:, :4]
    assert not q_view.is_contiguous()
    assert_close(paged_prefill_attention_triton(q_view, *rest), paged_prefill_attention_reference(q, *rest),
                 torch.float16)
    (q, *rest), _ = make_decode([7, 20], 4, 2, 32, torch.float16, block_size=8, seed=19)
    q_view = torch.cat([q, torch.randn_like(q)], dim=1)[:, :4]
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
    monkeypatch.setattr(attention, "DECODE_MERGE_ELEMS", merge_elems)
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
    assert decode_num_splits(1, 1, 10**6, 16) == attention.DECODE_MAX_SPLITS


def test_dispatch_uses_reference_on_cpu_tensors():
    if HAS_CUDA:
        pytest.skip("CPU-only dispatch check")
    args, _ = make_decode([5], 2, 1, 32, torch.float32, block_size=8)
    torch.testing.assert_close(paged_decode_attention(*args), paged_decode_attention_reference(*args))
    args, _ = make_prefill([5], [5], 2, 1, 32, torch.float32, block_size=8)
    torch.testing.assert_close(paged_prefill_attention(*args), paged_prefill_attention_reference(*args))


# ---------------------------------------------------------------- realistic shapes on a GPU
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
GPU_DTYPES = [torch.bfloat16, torch.float16]
RANDOM_CONTEXTS_32 = torch.randint(1, 8193, (32,), generator=torch.Generator().manual_seed(0)).tolist()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_prefill_realistic(dtype):
    q_lens, ctx_lens = [1, 700, 2048, 4096, 37, 0], [1, 700, 2100, 8192, 5000, 300]
    args, _ = make_prefill(q_lens, ctx_lens, 32, 8, 128, dtype, block_size=16, seed=21)
    assert_close(paged_prefill_attention(*args), paged_prefill_attention_reference(*args), dtype)


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


def test_kernels_do_not_specialise_on_the_block_table_width():
    # The width changes between eager steps; a specialisation on it (== 1, % 16) compiled a new
    # kernel variant in the middle of the throughput benchmark, costing ~1 s there.
    for kernel in (attention._prefill_kernel, attention._decode_split_kernel):
        if hasattr(kernel, "params"):  # compiled
            assert "stride_bt_seq" in [p.name for p in kernel.params if p.do_not_specialize]
        else:  # under TRITON_INTERPRET: the decorator's arguments
            assert "stride_bt_seq" in kernel.kwargs["do_not_specialize"]
