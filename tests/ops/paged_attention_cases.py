"""Shared cases for the paged-attention tests: a random paged KV cache, prefill and decode
arguments, decode scratch, and the tolerance check (see test_attention.py, test_decode_attention.py).
"""

import torch

from ember.ops.decode_attention import decode_counters_numel, decode_workspace_numel

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


def assert_not_specialised(kernel, arg: str) -> None:
    """``kernel`` is not specialised on the value of its argument ``arg`` (do_not_specialize)."""
    if hasattr(kernel, "params"):  # compiled
        assert arg in [p.name for p in kernel.params if p.do_not_specialize]
    else:  # under TRITON_INTERPRET: the decorator's arguments
        assert arg in kernel.kwargs["do_not_specialize"]
