"""What the elementwise-op tests share: the device, dtypes and the kernel-vs-reference check.

Kernels and references round at the same points, so besides a tolerance, where the device
rounds to nearest (fp16 everywhere, bf16 on CUDA; the interpreter truncates bf16) at most 1%
of elements may differ at all — differences can only come from rare fp32 near-ties.
"""

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROUNDS_TO_NEAREST = {torch.float16} | ({torch.bfloat16} if DEVICE == "cuda" else set())
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def tolerance(dtype: torch.dtype, atol: float) -> dict:
    rtol = {torch.float32: 1e-5, torch.float16: 2**-9, torch.bfloat16: 2**-6 if DEVICE == "cuda" else 2**-5}
    return dict(rtol=rtol[dtype], atol=atol)


def assert_kernel_close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, **tolerance(actual.dtype, atol))
    if actual.dtype in ROUNDS_TO_NEAREST:
        assert (actual != expected).float().mean().item() < 0.01
