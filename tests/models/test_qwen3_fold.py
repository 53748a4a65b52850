"""The RMSNorm weights folded into the projections they feed (``Qwen3ForCausalLM.fold_norms``):
the same model, its norms now a per-row scale of the next projection's product."""

from __future__ import annotations

import torch

from ember import LLM, SamplingParams

PROMPTS = ["Hello, my name is", "def fibonacci(n):\n    if n < 2:\n        return n\n", "x"]


def make_llm(folder, dtype, fold: bool) -> LLM:
    return LLM(str(folder), dtype=dtype, device="cpu", max_model_len=512, max_num_seqs=4, progress=False,
               fold_norms=fold)


def test_fold_moves_each_layer_norm_into_its_projection_once(tiny_checkpoint):
    plain = make_llm(tiny_checkpoint, "float32", fold=False).engine.model
    folded = make_llm(tiny_checkpoint, "float32", fold=True).engine.model
    assert not any(layer.input_layernorm.folded for layer in plain.model.layers)
    for before, after in zip(plain.model.layers, folded.model.layers):
        for norm, proj in [("input_layernorm", after.self_attn.qkv_proj),
                           ("post_attention_layernorm", after.mlp.gate_up_proj)]:
            g = getattr(before, norm).weight
            assert getattr(after, norm).folded and torch.equal(getattr(after, norm).weight, torch.ones_like(g))
            projection = before.self_attn.qkv_proj if norm == "input_layernorm" else before.mlp.gate_up_proj
            assert torch.equal(proj.weight, projection.weight * g)
    assert not folded.model.norm.folded and torch.equal(folded.model.norm.weight, plain.model.norm.weight)
    qkv = folded.model.layers[0].self_attn.qkv_proj.weight.clone()
    folded.fold_norms()  # a second call changes nothing
    assert torch.equal(folded.model.layers[0].self_attn.qkv_proj.weight, qkv)


def test_reloading_weights_undoes_the_fold(tiny_checkpoint):
    """Weights loaded into a folded model are the checkpoint's again, norms included: the model
    must compute with them as loaded, not as if still folded."""
    from ember.loader.weights import init_dummy_weights, load_checkpoint_weights

    llm = make_llm(tiny_checkpoint, "float32", fold=True)
    model = llm.engine.model
    ids = [llm.tokenizer.encode(PROMPTS[0])]
    want = llm.engine.prompt_logits(ids)[0]
    with torch.inference_mode():
        init_dummy_weights(model, seed=5)
        assert not any(layer.input_layernorm.folded for layer in model.model.layers)
        load_checkpoint_weights(model, tiny_checkpoint, progress=False)
    assert not any(layer.post_attention_layernorm.folded for layer in model.model.layers)
    torch.testing.assert_close(llm.engine.prompt_logits(ids)[0], want, atol=1e-5, rtol=1e-5)


def test_folded_model_computes_the_same_function(tiny_checkpoint):
    """fp32: logits within 1e-5 and identical greedy tokens. bf16: the fold's error against the
    fp32 model is no larger than the unfolded model's (what the GPU tests ask against HF)."""
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        for fold in (False, True):
            llm = make_llm(tiny_checkpoint, dtype, fold)
            ids = [llm.tokenizer.encode(p) for p in PROMPTS]
            runs[dtype, fold] = (llm.engine.prompt_logits(ids), [o.token_ids for o in llm.generate(ids, greedy, use_tqdm=False)])
    for got, want in zip(runs["float32", True][0], runs["float32", False][0]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert runs["float32", True][1] == runs["float32", False][1]

    def error(fold):  # worst 1 - cosine against the fp32 model
        return max((1 - torch.nn.functional.cosine_similarity(a.float(), b, dim=-1)).max().item()
                   for a, b in zip(runs["bfloat16", fold][0], runs["float32", False][0]))

    assert error(True) <= 1.5 * error(False) + 1e-5, (error(True), error(False))
