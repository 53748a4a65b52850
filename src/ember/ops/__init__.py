"""Hot operations of the Qwen3 forward pass and of sampling.

Every op lives in its own module and comes in three functions with one signature:

* ``<op>_reference`` -- plain PyTorch, the definition of what the op computes;
* ``<op>_triton``    -- the Triton kernel launcher (also runs on CPU tensors under
  ``TRITON_INTERPRET=1``, which is how CI tests it);
* ``<op>``           -- what the model calls: the kernel for CUDA tensors, the reference otherwise.

Shapes use T = tokens in the flat batch, B = sequences, V = vocabulary, D = head_dim.
KV cache layout (per layer): ``[num_blocks, block_size, num_kv_heads, head_dim]``; a token's
*slot* is ``block_id * block_size + offset``; ``block_tables[b, i]`` is the i-th block of
sequence b (int32, unused entries may hold anything but are never read past ``context_lens``).
"""

from ember.ops.activation import silu_mul
from ember.ops.embedding import embedding
from ember.ops.linear import (ResidualStream, fold_norm_weight, linear, linear_add, linear_silu_mul, lm_head,
                              rms_norm_linear)
from ember.ops.norm import add_rms_norm, rms_norm
from ember.ops.rope import qk_norm_rope_store_kv
from ember.ops.attention import paged_prefill_attention
from ember.ops.argmax import argmax_rows
from ember.ops.decode_attention import paged_decode_attention
from ember.ops.penalties import apply_penalties
from ember.ops.sampling import sample_tokens

__all__ = [
    "silu_mul",
    "embedding",
    "linear",
    "linear_add",
    "linear_silu_mul",
    "lm_head",
    "rms_norm_linear",
    "fold_norm_weight",
    "ResidualStream",
    "add_rms_norm",
    "rms_norm",
    "qk_norm_rope_store_kv",
    "argmax_rows",
    "paged_decode_attention",
    "paged_prefill_attention",
    "apply_penalties",
    "sample_tokens",
]
