"""PagedAttention (layers/attention.py): a step that mixes decode rows with prompt chunks sends the
leading one-token rows through the decode kernel and the rest through the prefill kernel; the
output is the same as all rows through the prefill kernel."""

import pytest
import torch

from ember import ops
from ember.layers.attention import AttentionMetadata, PagedAttention
from ember.ops import attention, decode_attention, rope
from ember.layers import attention as attention_layer
from ember.ops.rope import build_rope_cache

HQ, HKV, D, BLOCK = 4, 2, 32, 8
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def mixed_step(q_lens, ctx_lens, seed=0):
    """Raw q/k/v for the step's new tokens, a random paged cache (blocks shuffled) and the metadata."""
    gen = torch.Generator().manual_seed(seed)
    blocks = [-(-n // BLOCK) for n in ctx_lens]
    pool = torch.randperm(sum(blocks) + 2, generator=gen).tolist()
    k_cache, v_cache = torch.randn(2, len(pool), BLOCK, HKV, D, generator=gen)
    tables = torch.zeros(len(ctx_lens), max(blocks), dtype=torch.int32)
    for b, nb in enumerate(blocks):
        tables[b, :nb] = torch.tensor([pool.pop() for _ in range(nb)], dtype=torch.int32)
    positions = torch.cat([torch.arange(c - n, c) for n, c in zip(q_lens, ctx_lens)])
    seq_of_row = torch.repeat_interleave(torch.arange(len(q_lens)), torch.tensor(q_lens))
    slots = tables[seq_of_row, positions // BLOCK].long() * BLOCK + positions % BLOCK
    tokens = sum(q_lens)
    q, k, v = torch.randn(tokens, HQ * D, generator=gen), *torch.randn(2, tokens, HKV * D, generator=gen)
    norms = 1 + 0.1 * torch.randn(2, D, generator=gen)
    cu = torch.tensor([0, *q_lens]).cumsum(0).to(torch.int32)
    meta = AttentionMetadata(is_prefill=True, slot_mapping=slots, context_lens=torch.tensor(ctx_lens, dtype=torch.int32),
                             block_tables=tables, cu_seqlens_q=cu, max_seqlen_q=max(q_lens))
    cos_sin = build_rope_cache(D, max(ctx_lens) + 1, 1_000_000.0, None, DEVICE)
    meta = meta.to(torch.device(DEVICE))
    args = tuple(t.to(DEVICE) for t in (q, k, v, norms[0], norms[1])) + (cos_sin, positions.to(DEVICE))
    return args, meta, (k_cache.to(DEVICE), v_cache.to(DEVICE))


@pytest.mark.parametrize("kernels", [False, True], ids=["references", "kernels"])
@pytest.mark.parametrize("q_lens,ctx_lens,num_decode_rows", [
    ([1, 1, 9, 20], [30, 7, 9, 41], 2),
    ([1, 1, 1], [5, 17, 64], 3),  # one-token rows only
    ([1, 12, 1], [40, 12, 3], 1),  # a one-token chunk after a prompt stays with the prefill kernel
])
def test_decode_rows_of_a_mixed_step_go_through_the_decode_kernel(monkeypatch, kernels, q_lens, ctx_lens,
                                                                  num_decode_rows):
    # CPU tensors take the references unless told otherwise (TRITON_INTERPRET=1 there); CUDA ones the kernels
    for module in (attention, decode_attention, rope):
        monkeypatch.setattr(module, "use_triton", lambda t: kernels)
    monkeypatch.setattr(attention_layer, "MIXED_STEP_DECODE_KERNEL_MIN_ROWS", 1)
    calls = []
    for name in ("paged_decode_attention", "paged_prefill_attention"):
        op = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _op=op, _name=name, **kw: calls.append(_name) or _op(*a, **kw))
    args, meta, caches = mixed_step(q_lens, ctx_lens, seed=len(q_lens))
    outs = []
    for d in (num_decode_rows, 0):
        layer = PagedAttention(HQ, HKV, D, eps=1e-6)
        layer.k_cache, layer.v_cache = (c.clone() for c in caches)
        meta.num_decode_rows = d
        outs.append((layer(*args, meta), layer.k_cache, layer.v_cache))
    assert calls.count("paged_decode_attention") == 1
    assert calls.count("paged_prefill_attention") == 2  # with first_seq past the last sequence: nothing to do
    (mixed, k1, v1), (prefill_only, k2, v2) = outs
    assert torch.equal(k1, k2) and torch.equal(v1, v2)  # the K/V write is the same op either way
    torch.testing.assert_close(mixed, prefill_only, rtol=1e-5, atol=1e-5)



def test_few_decode_rows_stay_in_the_prefill_kernel(monkeypatch):
    calls = []
    for name in ("paged_decode_attention", "paged_prefill_attention"):
        op = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _op=op, _name=name, **kw: calls.append(_name) or _op(*a, **kw))
    args, meta, caches = mixed_step([1, 1, 9], [30, 7, 9])
    meta.num_decode_rows = 2
    layer = PagedAttention(HQ, HKV, D, eps=1e-6)
    layer.k_cache, layer.v_cache = caches
    layer(*args, meta)
    assert attention_layer.MIXED_STEP_DECODE_KERNEL_MIN_ROWS > 2 and calls == ["paged_prefill_attention"]
