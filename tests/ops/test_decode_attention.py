"""Paged decode attention (split-K): the Triton kernels against the PyTorch reference.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (slow: small shapes);
with one, the same cases run compiled on CUDA, plus realistic shapes marked ``gpu``.
"""

import pytest
import torch
from paged_attention_cases import HAS_CUDA, assert_close, assert_not_specialised, make_decode, make_scratch

from ember.ops import decode_attention
from ember.ops.decode_attention import (
    decode_num_splits,
    paged_decode_attention,
    paged_decode_attention_reference,
    paged_decode_attention_triton,
)


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


def test_dispatch_uses_reference_on_cpu_tensors():
    if HAS_CUDA:
        pytest.skip("CPU-only dispatch check")
    args, _ = make_decode([5], 2, 1, 32, torch.float32, block_size=8)
    torch.testing.assert_close(paged_decode_attention(*args), paged_decode_attention_reference(*args))


def test_kernel_does_not_specialise_on_the_block_table_width():
    assert_not_specialised(decode_attention._decode_split_kernel, "stride_bt_seq")  # see test_attention.py


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


