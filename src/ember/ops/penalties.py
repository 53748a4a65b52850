"""vLLM's logit penalties (presence, frequency, repetition), in place on fp32 logits."""

import torch
import triton
import triton.language as tl

from ember.ops.dispatch import use_triton


def apply_penalties_reference(
    logits, prompt_mask, output_counts, presence_penalty, frequency_penalty, repetition_penalty
):
    """vLLM's penalties, in place on float32 ``logits`` [B, V]; returns ``logits``."""
    counts = output_counts.to(torch.float32)
    occurred = output_counts > 0
    rp = repetition_penalty[:, None]
    penalized = torch.where(logits > 0, logits / rp, logits * rp)
    logits.copy_(torch.where(prompt_mask | occurred, penalized, logits))
    logits -= frequency_penalty[:, None] * counts
    logits -= presence_penalty[:, None] * occurred.to(torch.float32)
    return logits


@triton.jit
def _apply_penalties_kernel(
    logits_ptr, prompt_mask_ptr, counts_ptr, presence_ptr, frequency_ptr, repetition_ptr,
    V, logits_stride, mask_stride, counts_stride, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = cols < V
    x = tl.load(logits_ptr + row * logits_stride + cols, mask=valid, other=0.0)
    in_prompt = tl.load(prompt_mask_ptr + row * mask_stride + cols, mask=valid, other=0) != 0
    count = tl.load(counts_ptr + row * counts_stride + cols, mask=valid, other=0)
    rp = tl.load(repetition_ptr + row)
    occurred = count > 0
    penalized = tl.where(x > 0, tl.math.div_rn(x, rp), x * rp)  # div_rn: IEEE division, as torch
    x = tl.where(in_prompt | occurred, penalized, x)
    x = x - tl.load(frequency_ptr + row) * count.to(tl.float32)
    x = x - tl.load(presence_ptr + row) * occurred.to(tl.float32)
    tl.store(logits_ptr + row * logits_stride + cols, x, mask=valid)


def apply_penalties_triton(logits, prompt_mask, output_counts, presence_penalty, frequency_penalty, repetition_penalty):
    B, V = logits.shape
    assert logits.stride(1) == 1 and prompt_mask.stride(1) == 1 and output_counts.stride(1) == 1
    block = 2048
    # No FMA contraction, so the two subtractions round exactly like torch's.
    _apply_penalties_kernel[(B, triton.cdiv(V, block))](
        logits, prompt_mask.view(torch.uint8), output_counts, presence_penalty.contiguous(),
        frequency_penalty.contiguous(), repetition_penalty.contiguous(), V, logits.stride(0),
        prompt_mask.stride(0), output_counts.stride(0), BLOCK=block, enable_fp_fusion=False,
    )
    return logits


def apply_penalties(logits, prompt_mask, output_counts, presence_penalty, frequency_penalty, repetition_penalty):
    impl = apply_penalties_triton if use_triton(logits) else apply_penalties_reference
    return impl(logits, prompt_mask, output_counts, presence_penalty, frequency_penalty, repetition_penalty)
