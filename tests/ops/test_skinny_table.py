"""The skinny GEMM's measured table: every entry is a config the kernel can run for its shape."""

import pytest

from ember.ops.linear import OPS, SKINNY_MAX_M, SkinnyConfig
from ember.ops.skinny_table import SKINNY_TABLE


@pytest.mark.parametrize("key", list(SKINNY_TABLE), ids=lambda k: "-".join(map(str, k)))
def test_entry_is_runnable(key):
    op, n, k, m_bucket = key
    assert op in OPS and n > 0 and k > 0
    assert 1 <= m_bucket <= SKINNY_MAX_M and m_bucket & (m_bucket - 1) == 0, "M buckets are powers of two"
    entry = SKINNY_TABLE[key]
    if entry is None:  # the fallback
        return
    cfg = SkinnyConfig(*entry)
    for size in (cfg.block_n, cfg.block_k):
        assert size & (size - 1) == 0, cfg
    assert cfg.split_k >= 1 and cfg.num_warps in (1, 2, 4, 8, 16) and cfg.num_stages >= 1
    assert isinstance(cfg.dot, bool)
    assert k >= cfg.block_k, "a K step wider than K only loads padding"
