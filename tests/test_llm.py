"""The Python API (LLM.generate / LLM.chat) on a tiny checkpoint, CPU path."""

from __future__ import annotations

import math

import pytest

from ember import LLM, SamplingParams
from ember.errors import ContextLengthError, InvalidRequestError


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return LLM(str(tiny_checkpoint), dtype="float32", device="cpu", max_model_len=256, max_num_seqs=8, progress=False)


GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def test_prompt_forms(llm):
    ids = llm.tokenizer.encode("Hello, my name is")
    one = llm.generate("Hello, my name is", GREEDY, use_tqdm=False)
    many = llm.generate(["Hello, my name is", "Bye"], GREEDY, use_tqdm=False)
    tokens = llm.generate([ids], GREEDY, use_tqdm=False)
    flat = llm.generate(ids, GREEDY, use_tqdm=False)
    assert len(one) == 1 and len(many) == 2
    assert one[0].token_ids == many[0].token_ids == tokens[0].token_ids == flat[0].token_ids
    out = one[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 8
    assert out.text == llm.tokenizer.decode(out.token_ids, skip_special_tokens=True)
    assert out.outputs[0].text == out.text and out.prompt_token_ids == ids


def test_bad_prompts(llm):
    with pytest.raises(InvalidRequestError):
        llm.generate([], GREEDY)
    with pytest.raises(InvalidRequestError):
        llm.generate([[1, 2, 10**9]], GREEDY)
    with pytest.raises(ContextLengthError):
        llm.generate([[5] * 300], GREEDY)
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks


def test_stop_strings_and_stop_tokens(llm):
    base = llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=24, ignore_eos=True), use_tqdm=False)[0]
    assert len(base.text) > 4
    stop = base.text[2:4]
    out = llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop]), use_tqdm=False)[0]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop
    assert stop not in out.text and base.text.startswith(out.text)
    token = base.token_ids[3]
    out = llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[token]), use_tqdm=False)[0]
    assert out.finish_reason == "stop" and out.token_ids[-1] == token and token not in out.token_ids[:-1]


def test_seeded_sampling_reproduces_regardless_of_batch(llm):
    p = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=10, seed=1234, ignore_eos=True)
    alone = llm.generate("The weather", p, use_tqdm=False)[0].token_ids
    batched = llm.generate(["other prompt", "The weather", "x y z"], p, use_tqdm=False)[1].token_ids
    again = llm.generate("The weather", p, use_tqdm=False)[0].token_ids
    other = llm.generate("The weather", SamplingParams(**{**p.__dict__, "seed": 99}), use_tqdm=False)[0].token_ids
    assert alone == batched == again
    assert other != alone


def test_logprobs(llm):
    out = llm.generate("Hi", SamplingParams(temperature=0, max_tokens=5, logprobs=3, ignore_eos=True), use_tqdm=False)[0]
    assert len(out.logprobs) == 5
    for tok, lp in zip(out.token_ids, out.logprobs):
        assert lp.token_id == tok and lp.logprob <= 0 and len(lp.top) == 3
        assert max(lp.top.values()) == pytest.approx(lp.logprob)  # greedy picks the most likely
        assert sum(math.exp(v) for v in lp.top.values()) <= 1 + 1e-5


def test_penalties_change_output(llm):
    plain = llm.generate("a a a a a", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)[0]
    penal = llm.generate("a a a a a", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True,
                                                     repetition_penalty=2.0, frequency_penalty=2.0), use_tqdm=False)[0]
    assert plain.token_ids != penal.token_ids
    assert len(set(penal.token_ids)) >= len(set(plain.token_ids))


def test_chat_single_and_batch(llm):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    one = llm.chat(conv, GREEDY, enable_thinking=False, use_tqdm=False)
    two = llm.chat([conv, [{"role": "user", "content": "Yo"}]], GREEDY, use_tqdm=False)
    assert len(one) == 1 and len(two) == 2
    expected = llm.tokenizer.encode(llm.tokenizer.apply_chat_template(conv, enable_thinking=False))
    assert one[0].prompt_token_ids == expected


def test_default_sampling_params_come_from_generation_config(llm):
    p = llm.default_sampling_params()
    assert (p.temperature, p.top_p, p.top_k) == (0.6, 0.95, 20)  # tests/data generation_config.json
    assert llm.default_sampling_params(temperature=0.1).temperature == 0.1


def test_stream_abort_frees_blocks(llm):
    bm = llm.engine.block_manager
    gen = llm.stream("Hello", SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    next(gen)
    next(gen)
    assert bm.num_free_blocks < bm.num_blocks
    gen.close()
    assert bm.num_free_blocks == bm.num_blocks and not llm.engine.has_unfinished()


def test_generate_steps_run_with_the_heap_frozen(llm, monkeypatch):
    # Full GC passes inside a step would walk every object the process held before the run
    # (ember/engine/frozen_heap.py): generate freezes them for its steps and thaws them after.
    import gc

    gc.unfreeze()  # a clean start whatever ran before in this process
    engine = llm.engine
    step = engine.step
    frozen_during = []

    def recording_step():
        frozen_during.append(gc.get_freeze_count() > 0)
        return step()

    monkeypatch.setattr(engine, "step", recording_step)
    llm.generate(["a", "b"], GREEDY, use_tqdm=False)
    assert frozen_during and all(frozen_during)
    assert gc.get_freeze_count() == 0
