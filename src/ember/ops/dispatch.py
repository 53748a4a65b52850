"""Choose the Triton kernel for CUDA tensors and the PyTorch reference elsewhere."""

import os

import torch


def use_triton(t: torch.Tensor) -> bool:
    """True when ``t`` lives on a CUDA device and kernels are not disabled.

    ``EMBER_DISABLE_TRITON=1`` forces the references everywhere (useful to bisect a kernel bug).
    """
    return t.is_cuda and os.environ.get("EMBER_DISABLE_TRITON", "0") != "1"
