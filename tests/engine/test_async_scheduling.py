"""Async scheduling (step n+1 launched before step n's tokens reach the host) changes nothing a
user sees: outputs equal the synchronous engine's for every kind of stop and sampling, blocks
are all freed, and an abort while a token is in flight loses nothing else."""

from __future__ import annotations

import pytest
import torch

from ember import LLM, SamplingParams
from ember.engine.sequence import PENDING_TOKEN

PROMPTS = [
    "Hello, my name is",
    "x",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "Count: one, two, three,",
    "Write a haiku about the sea.",
    "def fibonacci(n):",
]


def make_llm(folder, async_scheduling: bool, **kw) -> LLM:
    kw = {"max_model_len": 128, "max_num_seqs": 4, "block_size": 8, "max_num_batched_tokens": 24, **kw}
    return LLM(str(folder), dtype="float32", device="cpu", progress=False, async_scheduling=async_scheduling, **kw)


def params_mix(stop_token: int, stop_text: str) -> list[SamplingParams]:
    return [
        SamplingParams(temperature=0, max_tokens=14, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=7, max_tokens=11, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[stop_token]),  # stops mid-run
        SamplingParams(temperature=0, max_tokens=30, stop=[stop_text], ignore_eos=True),
        SamplingParams(temperature=0.7, seed=3, max_tokens=9, repetition_penalty=1.3, presence_penalty=0.5),
        SamplingParams(temperature=0, max_tokens=12, min_tokens=12, stop_token_ids=[stop_token]),
    ]


def run(llm: LLM, params) -> list[tuple]:
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    return [(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason, o.outputs[0].stop_reason,
             [(lp.token_id, round(lp.logprob, 4), sorted(lp.top)) for lp in (o.outputs[0].logprobs or [])])
            for o in outs]


@pytest.fixture(scope="module")
def stops(tiny_checkpoint):
    """A token and a piece of text that greedy decoding of prompt 2 and 3 reaches mid-way."""
    llm = make_llm(tiny_checkpoint, async_scheduling=False)
    greedy = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    out2, out3 = llm.generate(PROMPTS[2:4], greedy, use_tqdm=False)
    text = out3.outputs[0].text
    return out2.outputs[0].token_ids[5], text[len(text) // 2 : len(text) // 2 + 2]


@pytest.mark.parametrize("preempt", [False, True])
def test_async_equals_sync(tiny_checkpoint, stops, monkeypatch, preempt):
    if preempt:  # 9 blocks of 8: the 60-token prompt crowds the others out, a decode preempts
        import ember.engine.llm_engine as llm_engine
        monkeypatch.setattr(llm_engine, "num_kv_blocks", lambda *a, **k: 9)
    params = params_mix(*stops)
    want = run(make_llm(tiny_checkpoint, async_scheduling=False), params)
    llm = make_llm(tiny_checkpoint, async_scheduling=True)
    got = run(llm, params)
    assert got == want
    assert want[2][2] == "stop" and want[2][3] == stops[0] and len(want[2][0]) < 30  # stopped mid-run
    assert want[3][2] == "stop" and want[3][3] == stops[1]
    assert all(PENDING_TOKEN not in g[0] for g in got)
    stats = llm.engine.stats()
    assert stats["kv_blocks_used"] == 0 and not llm.engine.has_unfinished()
    if preempt:
        assert stats["num_preemptions"] > 0


def test_steps_overlap_and_abort_in_flight(tiny_checkpoint):
    llm = make_llm(tiny_checkpoint, async_scheduling=True)
    engine = llm.engine
    greedy = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    ids = [llm.tokenizer.encode(p) for p in PROMPTS[:2]]
    keep, drop = engine.add_request(ids[0], greedy), engine.add_request(ids[1], greedy)
    seen = {keep.seq_id: [], drop.seq_id: []}
    for _ in range(3):
        for out in engine.step():
            seen[out.seq.seq_id].append(out.token_id)
    # The third step was launched before the second one's tokens were read: one in flight each.
    assert keep.num_pending == drop.num_pending == 1 and keep.token_ids[-1] == PENDING_TOKEN
    assert len(seen[keep.seq_id]) == 2  # step 1 only launched; steps 2 and 3 read the step before
    engine.abort(drop)
    assert drop.num_pending == 0 and PENDING_TOKEN not in drop.token_ids
    while engine.has_unfinished():
        for out in engine.step():
            assert out.seq is keep
            seen[keep.seq_id].append(out.token_id)
    alone = llm.generate([ids[0]], greedy, use_tqdm=False)[0].outputs[0].token_ids
    assert seen[keep.seq_id] == keep.output_token_ids == alone
    assert engine.stats()["kv_blocks_used"] == 0


def test_text_decoded_at_the_end_equals_streamed_text(tiny_checkpoint, stops):
    """LLM.generate decodes each output once at the end; streaming decodes token by token."""
    llm = make_llm(tiny_checkpoint, async_scheduling=True)
    params = params_mix(*stops)
    at_end = [o.outputs[0].text for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    engine = llm.engine
    seqs = [engine.add_request(llm.tokenizer.encode(p), sp) for p, sp in zip(PROMPTS, params)]
    streamed = {s.seq_id: "" for s in seqs}
    while engine.has_unfinished():
        for out in engine.step():
            streamed[out.seq.seq_id] += out.text
    assert [streamed[s.seq_id] for s in seqs] == at_end
    assert all(engine.output_text(s) == t for s, t in zip(seqs, at_end))
    assert sum(bool(t) for t in at_end) >= 5


def test_warm_up_leaves_no_trace(tiny_checkpoint):
    """The start-up warm-up (run on CUDA) changes no later output, counter or cache state."""
    prompts = ["Hello, my name is", "x"]
    params = SamplingParams(temperature=0.8, max_tokens=6, ignore_eos=True)  # seeds from the engine's RNG
    cold = make_llm(tiny_checkpoint, async_scheduling=True)
    want = [o.outputs[0].token_ids for o in cold.generate(prompts, params, use_tqdm=False)]
    warm = make_llm(tiny_checkpoint, async_scheduling=True)
    warm.engine.warm_up()
    stats = warm.engine.stats()
    assert stats["kv_blocks_used"] == stats["prefix_cache_queries"] == stats["num_preemptions"] == 0
    assert not warm.engine.block_manager.cached_blocks
    assert [o.outputs[0].token_ids for o in warm.generate(prompts, params, use_tqdm=False)] == want


def test_warm_up_moves_rows_past_and_within_16(tiny_checkpoint, monkeypatch):
    """The warm-up makes sequences leave a running batch, so that decode steps gather the survivors'
    pending tokens into new rows, once with more than 16 indices and once with at most 16: on CUDA
    each kernel on that path is then loaded at start-up, not inside a step (lazy module loading)."""
    llm = make_llm(tiny_checkpoint, async_scheduling=True, max_num_seqs=64, max_model_len=512,
                   max_num_batched_tokens=2048)
    gathers = []
    index_select = torch.Tensor.index_select

    def spy(self, dim, index, *args, **kwargs):
        pending = llm.engine.runner.pending.tokens
        if pending is not None and self.data_ptr() == pending.data_ptr():
            gathers.append(index.numel())
        return index_select(self, dim, index, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "index_select", spy)
    llm.engine.warm_up()
    assert any(n > 16 for n in gathers) and any(n <= 16 for n in gathers), gathers
    stats = llm.engine.stats()
    assert stats["kv_blocks_used"] == stats["num_preemptions"] == 0


def test_warm_up_runs_a_mixed_step_through_the_decode_kernel(tiny_checkpoint, monkeypatch):
    """A prompt arrives while 16 rows decode: that mixed step attends its decode rows with the decode
    kernel's one-split variant, which no decode graph compiles."""
    from ember import ops
    from ember.layers.attention import MIXED_STEP_DECODE_KERNEL_MIN_ROWS

    # A budget that takes every warm-up batch's prompts in one step: only the late arrival mixes.
    llm = make_llm(tiny_checkpoint, async_scheduling=True, max_num_seqs=64, max_model_len=512,
                   max_num_batched_tokens=8192)
    calls = []
    decode = ops.paged_decode_attention
    monkeypatch.setattr(ops, "paged_decode_attention", lambda q, *a, **kw: calls.append((q.shape[0], kw)) or decode(q, *a, **kw))
    llm.engine.warm_up()
    assert calls and all(rows == MIXED_STEP_DECODE_KERNEL_MIN_ROWS and kw["num_splits"] == 1 for rows, kw in calls)
    stats = llm.engine.stats()
    assert stats["kv_blocks_used"] == stats["num_preemptions"] == 0
