import pytest
import torch
import triton
import triton.language as tl

from ember.bench.jit_watch import TritonBuildWatch


@triton.jit
def _copy_kernel(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs, mask=offs < n), mask=offs < n)


def test_hooks_installed_chained_and_restored():
    runtime = triton.knobs.runtime
    seen = []
    runtime.jit_post_compile_hook = lambda **kw: seen.append(kw["fn"].name)
    try:
        with TritonBuildWatch() as watch:
            assert runtime.jit_cache_hook is not None
            # what Triton's JIT calls around a build (see triton/runtime/jit.py, _do_compile)
            info = triton.runtime.jit.JitFunctionInfo("m", "_copy_kernel", _copy_kernel)
            assert not runtime.jit_cache_hook(fn=info, key=None)
            runtime.jit_post_compile_hook(fn=info, key=None)
        assert runtime.jit_cache_hook is None and runtime.jit_post_compile_hook is not None
        assert watch.builds[0]["kernel"] == "_copy_kernel" and watch.builds[0]["seconds"] >= 0
        assert seen == ["_copy_kernel"]  # the earlier hook still ran
        assert watch.summary().startswith("_copy_kernel ×1 (")
    finally:
        runtime.jit_post_compile_hook = None
    assert TritonBuildWatch().summary() == "none"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_records_a_new_specialisation():
    src = torch.randn(100, device="cuda")
    dst = torch.empty_like(src)
    with TritonBuildWatch() as watch:
        _copy_kernel[(1,)](src, dst, 100, BLOCK=128)  # new: built inside
        _copy_kernel[(1,)](src, dst, 100, BLOCK=128)  # cached: not again
    assert [b["kernel"] for b in watch.builds] == ["_copy_kernel"]
    torch.testing.assert_close(dst, src)
