"""Ember's CPU path (float32) against HF transformers' Qwen3ForCausalLM on the same folders.

Tolerance: per-position logits agree to |ember - hf| <= 1e-4 + 1e-4 * |hf| (float32 rounding
of a differently ordered but equivalent computation; observed differences are ~1e-6), and
greedy continuations are identical token for token.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ember import LLM, SamplingParams  # noqa: E402

PROMPTS = [
    "Hello, my name is",
    "The capital of France is Paris. The capital of Germany is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "一二三四五六七八九十, 🙂 émoji and ünïcode " * 3,
    "x",
]
NEW_TOKENS = 32


@pytest.fixture(scope="module", params=["tied", "untied", "sharded", "yarn"])
def pair(request, tiny_checkpoints):
    folder = tiny_checkpoints[request.param]
    hf = transformers.Qwen3ForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    hf.eval()
    llm = LLM(str(folder), dtype="float32", device="cpu", max_model_len=1024, max_num_seqs=8, progress=False)
    return hf, llm


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = hf(torch.tensor([out])).logits[0, -1]
            out.append(int(logits.argmax()))
    return out[len(ids):]


def test_prompt_logits_match_hf(pair):
    hf, llm = pair
    prompts = [llm.tokenizer.encode(p) for p in PROMPTS]
    ours = llm.engine.prompt_logits(prompts)  # all prompts in one ragged batch
    for ids, got in zip(prompts, ours):
        with torch.no_grad():
            want = hf(torch.tensor([ids])).logits[0].float()
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_greedy_continuations_match_hf_alone_and_batched(pair):
    hf, llm = pair
    prompts = [llm.tokenizer.encode(p) for p in PROMPTS]
    want = [hf_greedy(hf, ids, NEW_TOKENS) for ids in prompts]
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    alone = [llm.generate([ids], params, use_tqdm=False)[0].token_ids for ids in prompts]
    batched = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert alone == want
    assert batched == want


def test_compute_logits_into_a_buffer_equals_returned_logits(pair):
    """The decode graphs have the LM head write into a fixed buffer (``out=``)."""
    _, llm = pair
    model = llm.engine.model
    hidden = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    out = torch.empty(5, model.config.vocab_size, dtype=model.logits_dtype)
    with torch.inference_mode():
        want = model.compute_logits(hidden)
        got = model.compute_logits(hidden, out=out[:3])
    assert got.data_ptr() == out.data_ptr() and torch.equal(got, want)
    assert want.dtype == model.logits_dtype == torch.float32
