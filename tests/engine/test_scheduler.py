"""Scheduler without a model: token budgets, chunked prefill next to decode, preemption."""

from __future__ import annotations

from ember.engine.block_manager import BlockManager
from ember.engine.scheduler import ScheduledBatch, Scheduler
from ember.engine.sequence import Sequence
from ember.sampling_params import SamplingParams


def seq(n: int, first: int = 0) -> Sequence:
    return Sequence(list(range(first, first + n)), SamplingParams(), seed=0)


def step(sched: Scheduler, token: int = 1) -> ScheduledBatch:
    """What LLMEngine.step does around the forward pass."""
    batch = sched.schedule()
    sched.mark_computed(batch)
    for s in batch.sampling_seqs:
        s.append(token)
    return batch


def rows(batch: ScheduledBatch) -> list[tuple[Sequence, int, bool]]:
    return list(zip(batch.seqs, batch.num_new_tokens, batch.produces_token))


def test_block_manager_allocates_whole_blocks_and_frees():
    bm = BlockManager(num_blocks=8, block_size=4)
    s = seq(9)
    assert bm.can_allocate(s)
    bm.allocate(s)
    assert len(s.block_table) == 3 and bm.num_free_blocks == 5
    assert bm.slot(s, 0) == s.block_table[0] * 4 and bm.slot(s, 8) == s.block_table[2] * 4
    for _ in range(3):  # tokens 10..12 fit in block 3
        s.append(1)
        assert bm.can_append(s)
        bm.append_slot(s)
    assert len(s.block_table) == 3
    s.append(1)  # token 13 needs a fourth block
    bm.append_slot(s)
    assert len(s.block_table) == 4
    bm.free(s)
    assert bm.num_free_blocks == 8 and not s.block_table


def test_admission_respects_token_budget_and_seq_limit():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=3, max_num_batched_tokens=20)
    seqs = [seq(8, 100 * i) for i in range(4)]
    for s in seqs:
        sched.add(s)
    batch = step(sched)  # 8 + 8 + the first 4 tokens of the third
    assert rows(batch) == [(seqs[0], 8, True), (seqs[1], 8, True), (seqs[2], 4, False)]
    batch = step(sched)  # two decodes, the rest of the third; the fourth waits (max_num_seqs)
    assert rows(batch) == [(seqs[0], 1, True), (seqs[1], 1, True), (seqs[2], 4, True)]
    assert list(sched.waiting) == [seqs[3]]
    batch = step(sched)
    assert batch.is_pure_decode and batch.seqs == seqs[:3]


def test_long_prompt_is_chunked_while_another_sequence_keeps_decoding():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=4, max_num_batched_tokens=32)
    short, long = seq(10), seq(100, 1000)
    sched.add(short)
    step(sched)
    sched.add(long)
    chunks = []
    for _ in range(4):
        batch = step(sched)
        assert rows(batch)[0] == (short, 1, True)  # the decode comes first, every step
        assert batch.num_batched_tokens <= 32 and not batch.is_pure_decode
        chunks.append(rows(batch)[1])
    assert chunks == [(long, 31, False), (long, 31, False), (long, 31, False), (long, 7, True)]
    assert long.num_output_tokens == 1 and short.num_output_tokens == 5
    assert step(sched).is_pure_decode


def test_running_sequences_never_exceed_the_budget():
    # A budget of 2 leaves room for two decodes, so a third sequence is not admitted.
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=2)
    for i in range(3):
        sched.add(seq(1, i))
    for _ in range(5):
        assert step(sched).num_batched_tokens <= 2
    assert len(sched.running) == 2 and len(sched.waiting) == 1


def test_preemption_takes_the_most_recently_admitted_first():
    bm = BlockManager(num_blocks=6, block_size=2, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=100)
    a, b, c = seq(4, 0), seq(4, 10), seq(4, 20)
    for s in (a, b, c):
        sched.add(s)
    step(sched)
    assert bm.num_free_blocks == 0
    batch = step(sched)  # a and b need a block each: c, the newest, goes and frees two
    assert batch.seqs == [a, b] and sched.num_preemptions == 1 and list(sched.waiting) == [c]
    assert step(sched).seqs == [a, b]  # their sixth tokens fit; no blocks left for c
    batch = step(sched)  # a needs a block again: b, now the newest running, goes
    assert batch.seqs == [a] and sched.num_preemptions == 2
    assert list(sched.waiting) == [b, c]  # the older one is recomputed first
    assert not b.block_table and not c.block_table and b.num_cached_tokens == 0
    sched.finish(a)
    batch = step(sched)  # b recomputes prompt + its two tokens; c does not fit next to it yet
    assert rows(batch) == [(b, 7, True)] and list(sched.waiting) == [c]


def test_a_step_that_preempts_admits_nothing():
    bm = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=100)
    a, b = seq(4), seq(4, 10)
    sched.add(a)
    sched.add(b)
    step(sched)
    batch = step(sched)  # a needs a block: b is preempted and must not be re-admitted now
    assert batch.seqs == [a] and list(sched.waiting) == [b] and sched.num_preemptions == 1
    sched.finish(a)
    batch = step(sched)
    assert batch.seqs == [b] and len(b.block_table) == 3  # recomputes prompt + its token


def test_a_lone_sequence_that_outgrows_the_cache_preempts_itself():
    bm = BlockManager(num_blocks=2, block_size=2)
    sched = Scheduler(bm, max_num_seqs=2, max_num_batched_tokens=8)
    s = seq(3)
    sched.add(s)
    step(sched)
    step(sched)  # 4 tokens: still fits in two blocks
    batch = sched.schedule()  # the fifth needs a third block that does not exist
    assert len(batch) == 0 and list(sched.waiting) == [s] and sched.num_preemptions == 1
