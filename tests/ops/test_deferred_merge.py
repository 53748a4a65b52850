"""The decode attention's merge deferred to the o projection (``defer_merge``; the skinny GEMM's
MERGE_X): the projection must compute what the merge launch and the plain kernel compute,
write the merged attention output where the merge kernel would, and fall back to the merge launch
wherever it cannot merge itself.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (small shapes)."""

import importlib

import pytest
import torch
from paged_attention_cases import DEVICE, HAS_CUDA, assert_close, make_decode
from test_linear import assert_gemm_close, make

from ember.ops import decode_attention
from ember.ops.decode_attention import (
    DECODE_BLOCK_N,
    PROJECTION_MERGE_MAX_SPLITS,
    DecodePartials,
    decode_num_splits,
    decode_valid_splits,
    defer_merge_pays,
    merged,
    paged_decode_attention_triton,
)
from ember.ops.linear import ResidualStream, linear_add
from ember.ops.skinny_gemm import SkinnyConfig, _launch, merge_x_fits

linear_module = importlib.import_module("ember.ops.linear")

NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM = 16, 4, 32  # K = 512: whole heads per program even at split-K 2
NUM_SPLITS = 16  # merge mode "launch" (test_in_kernel_merge_mode_defers_too: "kernel")
# Small blocks, several programs per K range: each repeats the merge of its heads.
MERGE_CONFIGS = {
    "dot": SkinnyConfig(16, 64, 1, 4, 2, True),
    "dot-x-left-split": SkinnyConfig(16, 128, 2, 4, 2, True, True),
    "fma": SkinnyConfig(8, 128, 1, 4, 1, False),
}


def deferred_and_merged(ctx_lens, dtype, seed=3):
    """(partials of a deferred decode attention, the same attention merged by the launch as [B, K])."""
    args, _ = make_decode(ctx_lens, NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, dtype, block_size=16, seed=seed)
    partials = paged_decode_attention_triton(*args, num_splits=NUM_SPLITS, defer_merge=True)
    assert isinstance(partials, DecodePartials) and partials.out.shape == (len(ctx_lens), NUM_Q_HEADS * HEAD_DIM)
    return partials, paged_decode_attention_triton(*args, num_splits=NUM_SPLITS).flatten(1)


# [150]: 3 partials; [0, 70]: a padding row (no partial: zeros) and 2; [600, 5]: 10 partials, more
# than one straight-line chunk, so the projection loops over its splits.
@pytest.mark.parametrize("ctx_lens", [[150], [0, 70], [600, 5]], ids=["3", "0+2", "10+1"])
@pytest.mark.parametrize("config", MERGE_CONFIGS.values(), ids=MERGE_CONFIGS.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_projection_merges_like_the_merge_launch(ctx_lens, config, dtype):
    partials, x = deferred_and_merged(ctx_lens, dtype)
    w = make((48, NUM_Q_HEADS * HEAD_DIM), dtype, scale=0.1, seed=1)
    residual = make((len(ctx_lens), 48), dtype, seed=2)
    got, got_stats = _launch(None, w, None, config, residual=residual, merge=partials)
    want, want_stats = _launch(x, w, None, config, residual=residual)
    # The merged attention output is where the merge kernel puts it. The projection folds the
    # splits in one at a time (online rescaling), the merge kernel all at once: fp32 roundings apart.
    assert_close(partials.out, x, dtype)
    assert_gemm_close(got, want)
    assert torch.isfinite(got_stats).all()
    assert (partials.out[ctx_lens.index(0)] == 0).all() if 0 in ctx_lens else True


def test_in_kernel_merge_mode_defers_too():
    # With few splits the split kernel would merge in its last-arriving program; deferred, it
    # merges nothing and leaves its arrival counters untouched (all zero).
    args, _ = make_decode([150, 40], NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, torch.float32, block_size=16, seed=6)
    counters = torch.zeros(2 * NUM_KV_HEADS, dtype=torch.int32, device=DEVICE)
    partials = paged_decode_attention_triton(*args, num_splits=4, merge="kernel", counters=counters, defer_merge=True)
    assert isinstance(partials, DecodePartials) and not counters.any()
    merged_out = partials.merge().view(2, NUM_Q_HEADS, HEAD_DIM)
    in_kernel = paged_decode_attention_triton(*args, num_splits=4, merge="kernel")
    if HAS_CUDA:  # compiled, the two merges' sums may round apart
        assert_close(merged_out, in_kernel, torch.float32)
    else:
        assert torch.equal(merged_out, in_kernel)


def test_linear_add_dispatch_merges_or_falls_back(monkeypatch):
    # Through ops.linear_add, as the o projection calls it (kernels forced on for CPU tensors):
    # the kernel merges where it runs with whole heads per program; three rows (past
    # PROJECTION_MERGE_MAX_ROWS) take the merge launch, then the plain kernel; the stream and the
    # merged output are the same either way.
    monkeypatch.setattr(linear_module, "use_triton", lambda t: True)
    merging = []
    launch = linear_module._launch

    def spy(*args, merge=None, **kwargs):
        merging.append(merge is not None)
        return launch(*args, merge=merge, **kwargs)

    monkeypatch.setattr(linear_module, "_launch", spy)
    w = make((48, NUM_Q_HEADS * HEAD_DIM), torch.bfloat16, scale=0.1, seed=1)  # the kernel takes 16-bit
    for ctx_lens in ([150], [40, 0, 90]):
        partials, x = deferred_and_merged(ctx_lens, torch.bfloat16)
        residual = make((len(ctx_lens), 48), torch.bfloat16, seed=2)
        stream = linear_add(partials, w, residual)
        want = linear_add(x, w, residual)
        assert isinstance(stream, ResidualStream) and stream.residual is None
        assert_gemm_close(stream.hidden, want.hidden)  # the two merges round apart (see above)
        assert_close(partials.out, x, torch.bfloat16)
    assert merging == [True, False, False, False]  # one row merged in the kernel; three rows not


def test_plain_linear_and_merged_take_partials():
    partials, x = deferred_and_merged([150, 30], torch.float32)
    w = make((24, NUM_Q_HEADS * HEAD_DIM), torch.float32, seed=4)
    assert torch.equal(linear_module.linear(partials, w), torch.nn.functional.linear(x, w))
    assert merged(x) is x


def test_merge_x_fits():
    partials, _ = deferred_and_merged([150], torch.float32)
    k = NUM_Q_HEADS * HEAD_DIM
    assert merge_x_fits(1, k, k, partials) and merge_x_fits(2, k, k // 2, partials)
    assert not merge_x_fits(3, k, k, partials)  # rows past PROJECTION_MERGE_MAX_ROWS
    assert not merge_x_fits(1, k, k // 2 + HEAD_DIM // 2, partials)  # a head cut between programs
    assert not merge_x_fits(1, k, 3 * HEAD_DIM, partials)  # a program's columns: a power of two


def test_valid_splits_mirror_the_kernel_and_deferral_policy():
    # decode_valid_splits is the kernels' _tokens_per_split arithmetic on the host.
    for n, splits in [(0, 64), (1, 64), (64, 64), (65, 64), (512, 64), (513, 64), (8192, 64), (300, 8)]:
        per_split = max(-(-(-(-n // splits)) // DECODE_BLOCK_N) * DECODE_BLOCK_N, 64)
        assert decode_valid_splits(n, splits) == -(-n // per_split)
    assert decode_valid_splits(512, 64) == 8 and decode_valid_splits(513, 64) == 9
    assert defer_merge_pays(1, 64, 512) and not defer_merge_pays(1, 64, 513)
    assert defer_merge_pays(2, 32, 384)
    assert not defer_merge_pays(4, 16, 128)  # more rows than the skinny kernel's fused ops take
    assert defer_merge_pays(1, 4, 128)  # few splits: the split kernel's in-kernel merge is skipped too
    assert not defer_merge_pays(1, 1, 128)  # one split: nothing to merge
    # Qwen3's batch-1 decode on 8 KV heads runs 64 splits: contexts up to 512 tokens defer.
    assert decode_num_splits(1, 8, 4096, 16) == 64


def test_attention_layer_returns_partials_when_asked(monkeypatch):
    from ember.layers.attention import AttentionMetadata, PagedAttention
    from test_decode_attention import make_norm_rope_decode

    rope_args, (tables, ctx, scale) = make_norm_rope_decode([9, 70], 4, 2, 32, torch.float32, block_size=8, seed=5)
    q, k, v, q_norm_weight, k_norm_weight, cos_sin, positions, k_cache, v_cache, slots, eps = rope_args
    monkeypatch.setattr(decode_attention, "use_triton", lambda t: True)
    outs = []
    for defer in (False, True):
        layer = PagedAttention(4, 2, 32, eps)
        layer.k_cache, layer.v_cache = k_cache.clone(), v_cache.clone()
        meta = AttentionMetadata(is_prefill=False, slot_mapping=slots, context_lens=ctx, block_tables=tables,
                                 decode_num_splits=8, decode_defer_merge=defer)
        outs.append(layer(q.flatten(1), k.flatten(1), v.flatten(1), q_norm_weight, k_norm_weight, cos_sin,
                          positions, meta))
    assert isinstance(outs[1], DecodePartials) and outs[1].out.shape == outs[0].shape == (2, 128)
    assert torch.equal(outs[1].merge(), outs[0])
    assert DEVICE in str(outs[0].device)


# ---------------------------------------------------------------- real shapes on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", ["0.6B", "8B"])
@pytest.mark.parametrize("ctx_lens", [[128], [384, 77], [512], [700], [8192]])
def test_gpu_o_projection_merges_at_real_shapes(shape, ctx_lens, monkeypatch):
    # Qwen3's o projection at batch 1-2 with the engine's split counts (64 and 32 on 8 KV heads) and
    # the table's configs, through ops.linear_add: the kernel merges (700 and 8,192 tokens: more than
    # MERGE_SPLITS partials, the looping form) and matches the merge launch + plain kernel.
    from ember.tools.random_checkpoint import QWEN3_SHAPES

    cfg = QWEN3_SHAPES[shape]
    hq, hkv, hidden = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    args, _ = make_decode(ctx_lens, hq, hkv, 128, torch.bfloat16, block_size=16, seed=9)
    num_splits = decode_num_splits(len(ctx_lens), hkv, 4096 // 16, 16)
    partials = paged_decode_attention_triton(*args, num_splits=num_splits, defer_merge=True)
    x = paged_decode_attention_triton(*args, num_splits=num_splits).flatten(1)
    w = make((hidden, hq * 128), torch.bfloat16, scale=0.02, seed=1)
    residual = make((len(ctx_lens), hidden), torch.bfloat16, seed=2)
    merging = []
    launch = linear_module._launch

    def spy(*a, merge=None, **kw):
        merging.append(merge is not None)
        return launch(*a, merge=merge, **kw)

    monkeypatch.setattr(linear_module, "_launch", spy)
    got = linear_add(partials, w, residual)
    assert merging == [True]
    assert_close(partials.out, x, torch.bfloat16)
    assert_gemm_close(got.hidden, linear_add(x, w, residual).hidden)
