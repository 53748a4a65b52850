"""Choose the Triton kernel for CUDA tensors and the PyTorch reference elsewhere; the PDL switch.

Programmatic Dependent Launch (PDL, sm_90+). A decode step is a chain of ~250 small dependent
kernels, each short enough that the gap between one kernel's end and the next one's start is a
large share of the step. A kernel launched with ``launch_pdl=True`` may be scheduled while the
kernel before it on the stream is still running: it runs until ``gdc_wait()``
(``griddepcontrol.wait``), which returns once every earlier kernel has completed and its memory
is visible. Once all programs of a kernel have called ``gdc_launch_dependents()`` (or exited),
the next PDL kernel may start its own prologue. CUDA graph capture (CUDA >= 12.3) records this as
a programmatic edge between the two kernel nodes.

Rules for every PDL kernel (embedding, rms_norm, add_rms_norm, qk_norm_rope_store_kv, the decode
attention split and merge kernels, the skinny GEMM with what rides along):
- The gdc calls sit under a constexpr ``USE_PDL``; the launcher passes ``USE_PDL=use_pdl`` and
  ``launch_pdl=use_pdl`` from one ``pdl_enabled(device)`` call, which is False on CPU / in the
  interpreter (where the calls do not exist), so the two always agree.
- Every program calls ``pdl_sync()`` (wait, then launch dependents) unconditionally, before it
  writes any global memory (a buffer it writes may still be read by the previous kernel: the
  caching allocator hands freed blocks on in stream order) and before it reads anything a
  kernel or copy earlier in the stream may write: activations, the KV cache, positions, slots,
  block tables, context lengths, token ids, split-K workspaces and arrival counters. Before it
  only weights may be touched: the skinny GEMM asks L2 for its first weight tiles there
  (``l2_prefetch``), which overlaps its weight stream with the previous kernel's tail. (Weights
  are written once at load time, never by a kernel of a step.)
- ``gdc_launch_dependents()`` right after the wait is safe: the next kernel only runs its own
  prologue, then waits for this kernel's full completion in its own ``gdc_wait``.
- Two exceptions in ops/decode_attention.py read before the wait what only the step's input
  copy (a kernel launched without PDL, ops/host_copy.py, or a copy) and earlier steps wrote,
  never what a kernel of this step writes: the fused split kernel at small batches (``PRELOAD``:
  context lengths, block tables, positions, slots, the cached K/V of earlier tokens; its own new
  K/V it patches in after the wait) and the merge kernel (context lengths). That is safe because
  every kernel calls ``gdc_launch_dependents()`` only after its own wait: when kernel N starts,
  kernel N - 1 has passed its wait, so kernel N - 2 and everything before it (the input copy
  included) has completed. Such a kernel must not directly follow one that writes those inputs.
- Completion is transitive: a PDL kernel cannot complete before its own wait returned, i.e.
  before its predecessor completed; so when kernel N's wait returns, every earlier kernel has
  completed, PDL or not (a kernel launched without the attribute waits for its predecessor in
  full, as usual). This is what keeps the split-K arrival counters and workspaces shared by
  launches of the attention and skinny-GEMM kernels safe: all their accesses come after the
  wait, so launch N+1 touches them only once launch N (and its counter reset) is done.
"""

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


def use_triton(t: torch.Tensor) -> bool:
    """True when ``t`` lives on a CUDA device and kernels are not disabled.

    ``EMBER_DISABLE_TRITON=1`` forces the references everywhere (useful to bisect a kernel bug).
    """
    return t.is_cuda and os.environ.get("EMBER_DISABLE_TRITON", "0") != "1"


@functools.cache
def _device_supports_pdl(index: int) -> bool:
    # griddepcontrol needs sm_90; programmatic edges in captured graphs need CUDA >= 12.3.
    cuda = tuple(int(v) for v in (torch.version.cuda or "0.0").split(".")[:2])
    return torch.cuda.get_device_capability(index)[0] >= 9 and cuda >= (12, 3)


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch with PDL: on CUDA sm_90+, unless ``EMBER_DISABLE_PDL=1``.

    Always False off CUDA and in the Triton interpreter. Read at every launch; a CUDA graph keeps
    the launches it captured.
    """
    if device.type != "cuda" or os.environ.get("EMBER_DISABLE_PDL", "0") == "1" or triton.knobs.runtime.interpret:
        return False
    return _device_supports_pdl(device.index if device.index is not None else torch.cuda.current_device())


@triton.jit
def pdl_sync():
    """Wait until the previous kernels completed and their writes are visible, then let the next
    PDL kernel launch. Only under a ``USE_PDL`` constexpr (the interpreter has no griddepcontrol)."""
    gdc_wait()
    gdc_launch_dependents()


@triton.jit
def l2_prefetch(ptrs):
    """Ask L2 to fetch the 128-byte lines holding ``ptrs``: a hint, nothing waits for it. Every
    address must be valid. PTX only (no interpreter): call it under the ``USE_PDL`` constexpr."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // dummy $0", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)
