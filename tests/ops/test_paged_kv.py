"""The PyTorch references built on ops/paged_kv.py, against dense SDPA and each other."""

import pytest
import torch
import torch.nn.functional as F
from paged_attention_cases import DEVICE, make_decode, make_prefill

from ember.ops.attention import paged_prefill_attention_reference
from ember.ops.decode_attention import paged_decode_attention_reference


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

