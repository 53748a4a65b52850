"""Op tests: without a GPU the Triton kernels run on CPU tensors in Triton's interpreter."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported (@jit reads it)

    import triton.runtime.interpreter as _interpreter

    # triton 3.6's interpreter turns scalar tensors into ints with int(array of shape (1,)), which
    # numpy >= 2.4 rejects, so `range(runtime_bound)` in a kernel fails (triton-lang/triton#9171).
    # Same one-line fix as upstream: squeeze first.
    _patch_lang_tensor = _interpreter._patch_lang_tensor

    def _patch_lang_tensor_numpy24(tensor, scope):
        _patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    _interpreter._patch_lang_tensor = _patch_lang_tensor_numpy24
