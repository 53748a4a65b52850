"""The engine on the tiny checkpoint (fp32, CPU): chunked prefill, prefix caching and
preemption never change greedy outputs; the interactive chat reuses the cache across turns."""

from __future__ import annotations

import io

import pytest

from ember import LLM, SamplingParams
from ember.cli.chat import run_chat
from ember.cli.main import build_parser

# The chosen tokens' logprobs are compared too: on random weights greedy tokens barely depend
# on the context, but logits move by ~0.1 when an earlier token changes (noise: ~1e-6).
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=0)
SYSTEM = "You are a careful assistant. Answer briefly, cite sources, and never invent facts. " * 2
PROMPTS = [
    "Hello, my name is",
    "x",
    "The quick brown fox jumps over the lazy dog. " * 6,  # about 60 tokens: several chunks
    SYSTEM + "What is the capital of France?",
    SYSTEM + "Name three prime numbers.",
    SYSTEM + "What is the capital of France? Explain.",
]


def make_llm(folder, **kw) -> LLM:
    kw = {"max_model_len": 256, "max_num_seqs": 4, "block_size": 8, **kw}
    return LLM(str(folder), dtype="float32", device="cpu", progress=False, **kw)


def generate(llm: LLM, prompts=PROMPTS) -> list[tuple[list[int], list[float]]]:
    outputs = llm.generate(prompts, GREEDY, use_tqdm=False)
    return [(o.token_ids, [lp.logprob for lp in o.outputs[0].logprobs]) for o in outputs]


def assert_same(got, want) -> None:
    for (tokens, logprobs), (want_tokens, want_logprobs) in zip(got, want, strict=True):
        assert tokens == want_tokens
        assert logprobs == pytest.approx(want_logprobs, abs=1e-4)


def record_batches(llm: LLM) -> list:
    """Every batch the engine schedules from now on."""
    batches, schedule = [], llm.engine.scheduler.schedule

    def recording():
        batch = schedule()
        batches.append(batch)
        return batch

    llm.engine.scheduler.schedule = recording
    return batches


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """No chunking (the budget covers every prompt at once), no prefix caching, block size 16."""
    llm = make_llm(tiny_checkpoint, block_size=16, max_num_batched_tokens=4096, enable_prefix_caching=False)
    return generate(llm)


@pytest.mark.parametrize("budget", [8, 16, None])
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_greedy_outputs_do_not_depend_on_budget_or_prefix_caching(tiny_checkpoint, reference, budget, prefix_caching):
    llm = make_llm(tiny_checkpoint, max_num_batched_tokens=budget, enable_prefix_caching=prefix_caching)
    batches = record_batches(llm)
    assert_same(generate(llm), reference)
    assert_same(generate(llm), reference)  # again, now with every prompt's blocks in the cache
    limit = budget or 2048
    assert llm.engine.scheduler.max_num_batched_tokens == limit
    assert all(b.num_batched_tokens <= limit for b in batches)
    if budget is not None:  # long prompts were chunked next to running decodes
        assert any(not all(b.produces_token) for b in batches)
        assert any(not b.is_pure_decode and 1 in b.num_new_tokens for b in batches)
    stats = llm.engine.stats()
    if prefix_caching:
        assert stats["prefix_cache_hits"] > 0
        assert stats["prefix_cache_queries"] >= 2 * sum(len(llm.tokenizer.encode(p)) for p in PROMPTS)
    else:
        assert stats["prefix_cache_hits"] == stats["prefix_cache_queries"] == 0
    assert stats["kv_blocks_used"] == 0 and stats["num_running"] == stats["num_waiting"] == 0


def test_shared_system_prompt_is_computed_once(tiny_checkpoint, reference):
    llm = make_llm(tiny_checkpoint, max_num_batched_tokens=16)
    shared = PROMPTS[3:]
    assert_same(generate(llm, shared), reference[3:])
    # Admitted one after another (the budget is small), later ones reuse the system prompt.
    system_blocks = len(llm.tokenizer.encode(SYSTEM)) // 8
    assert llm.engine.stats()["prefix_cache_hits"] >= 2 * 8 * (system_blocks - 1)


def test_preemption_recomputes_and_loses_nothing(tiny_checkpoint, reference, monkeypatch):
    import ember.engine.llm_engine as llm_engine

    # 10 blocks of 8 cannot hold four sequences of up to 72 tokens: decodes must preempt.
    monkeypatch.setattr(llm_engine, "num_kv_blocks", lambda *a, **k: 10)
    for prefix_caching in (True, False):
        llm = make_llm(tiny_checkpoint, max_model_len=80, max_num_batched_tokens=32,
                       enable_prefix_caching=prefix_caching)
        assert_same(generate(llm), reference)
        stats = llm.engine.stats()
        assert stats["num_preemptions"] > 0 and stats["kv_blocks_used"] == 0


def test_interactive_chat_reuses_the_previous_turn(tiny_checkpoint):
    llm = make_llm(tiny_checkpoint, max_model_len=512, max_num_seqs=1, block_size=16)
    hits_before_turn = []
    stream = llm.stream

    def recording_stream(*args, **kwargs):
        hits_before_turn.append(llm.engine.stats()["prefix_cache_hits"])
        return stream(*args, **kwargs)

    llm.stream = recording_stream
    args = build_parser().parse_args(["-m", "unused", "-i", "-n", "6", "--temp", "0"])
    first = "Please tell me a long story about a fox, a dog and a river, with a happy ending."
    out = io.StringIO()
    run_chat(llm, args, stdin=io.StringIO(f"{first}\nAnd then?\n"), stdout=out)
    hits_after = llm.engine.stats()["prefix_cache_hits"]
    assert len(hits_before_turn) == 2 and hits_before_turn == [0, 0]
    assert hits_after > 0  # the second turn's prompt starts with the first turn's
    assert llm.engine.stats()["kv_blocks_used"] == 0
