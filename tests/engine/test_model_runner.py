"""The runner's orchestration: one staging flip per launch, the decode path for pure decode
steps and the prefill path otherwise, sampling only the rows that yield a token, and the
same logits whichever path computed them."""

from __future__ import annotations

import pytest
import torch

from ember import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    # A 10-token budget: the 23-token prompt is prefilled in chunks, mixed with decode rows.
    return LLM(str(tiny_checkpoint), dtype="float32", device="cpu", max_model_len=128, max_num_seqs=4,
               block_size=8, max_num_batched_tokens=10, progress=False)


def test_parts_share_staging_and_pending_tokens(llm):
    runner = llm.engine.runner
    assert runner.inputs.staging is runner.sampler.staging is runner.staging
    assert runner.inputs.pending is runner.sampler.pending is runner.pending
    assert runner.cuda_graphs.inputs is runner.inputs


@pytest.mark.parametrize("with_short", [False, True])
def test_run_paths_and_sampled_rows(llm, monkeypatch, with_short):
    engine, runner = llm.engine, llm.engine.runner
    launches = []  # (path, rows sampled or None), per launch
    parities, decode_calls = [], []
    run, decode_logits, sample = runner.run, runner.decode_logits, runner.sampler.sample

    def recording_run(batch):
        launches.append(("decode" if batch.is_pure_decode else "prefill", None))
        out = run(batch)
        parities.append(runner.staging.parity)
        return out

    def recording_decode_logits(seqs):
        assert launches[-1][0] == "decode"
        decode_calls.append(len(seqs))
        return decode_logits(seqs)

    def recording_sample(seqs, logits, argmax_done=False):
        assert logits.shape == (len(seqs), engine.config.vocab_size) and logits.dtype == torch.float32
        assert not argmax_done  # no graphs on the CPU
        launches[-1] = (launches[-1][0], len(seqs))
        return sample(seqs, logits, argmax_done)

    monkeypatch.setattr(runner, "run", recording_run)
    monkeypatch.setattr(runner, "decode_logits", recording_decode_logits)
    monkeypatch.setattr(runner.sampler, "sample", recording_sample)
    seqs = [engine.add_request([1000 + i for i in range(3)], GREEDY)] if with_short else []
    seqs.append(engine.add_request([(3000 if with_short else 2000) + i for i in range(23)], GREEDY))  # uncached
    while engine.has_unfinished():
        engine.step()
    assert all(len(s.output_token_ids) == 4 for s in seqs)
    if with_short:  # chunks of 7 and 9 (beside the short prompt, then its decode row), then 7
        assert launches == [("prefill", 1), ("prefill", 1), ("prefill", 2), ("decode", 2), ("decode", 1),
                            ("decode", 1)]
    else:  # chunks of 10, 10 and 3: the partial ones sample nothing
        assert launches == [("prefill", None), ("prefill", None), ("prefill", 1), ("decode", 1), ("decode", 1),
                            ("decode", 1)]
    assert decode_calls == [n for path, n in launches if path == "decode"]
    assert all(a != b for a, b in zip(parities, parities[1:]))  # one staging flip per launch


def test_decode_path_logits_equal_prefill_path(llm):
    """The second greedy token (decode path) is the argmax of a prefill over prompt + first."""
    prompts = [[1000 + 7 * i + j for j in range(n)] for i, n in enumerate([5, 12, 9])]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True), use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        first, second = out.token_ids
        logits = llm.engine.prompt_logits([prompt + [first]])[0]
        assert logits.shape == (len(prompt) + 1, llm.engine.config.vocab_size)
        assert logits[-2].argmax().item() == first and logits[-1].argmax().item() == second
