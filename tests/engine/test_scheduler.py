"""Block manager and scheduler without a model: budgets, preemption, no leaked blocks."""

from __future__ import annotations

import random

from ember.engine.block_manager import BlockManager
from ember.engine.scheduler import Scheduler
from ember.engine.sequence import Sequence
from ember.sampling_params import SamplingParams


def seq(n: int) -> Sequence:
    return Sequence(list(range(n)), SamplingParams(), seed=0)


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
    assert bm.num_free_blocks == 8 and s.block_table == []


def test_prefill_respects_token_budget_and_seq_limit():
    bm = BlockManager(64, 4)
    sched = Scheduler(bm, max_num_seqs=3, max_num_batched_tokens=20)
    for n in (8, 8, 8, 8):
        sched.add(seq(n))
    batch, prefill = sched.schedule()
    assert prefill and [len(s) for s in batch] == [8, 8]  # a third would exceed 20 tokens
    batch, prefill = sched.schedule()
    assert prefill and len(batch) == 1  # max_num_seqs=3
    for s in sched.running:
        s.num_cached_tokens = len(s)
        s.append(0)
    batch, prefill = sched.schedule()
    assert not prefill and len(batch) == 3


def test_a_long_prompt_alone_may_exceed_the_budget():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=4, max_num_batched_tokens=8)
    sched.add(seq(30))
    batch, prefill = sched.schedule()
    assert prefill and len(batch) == 1


def test_preemption_when_blocks_run_out_and_recompute_later():
    bm = BlockManager(num_blocks=4, block_size=2)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=100)
    a, b = seq(4), seq(4)
    sched.add(a)
    sched.add(b)
    batch, _ = sched.schedule()
    assert batch == [a, b] and bm.num_free_blocks == 0
    for s in batch:
        s.num_cached_tokens = len(s)
        s.append(7)
    batch, prefill = sched.schedule()  # both need a new block, none free: b is preempted
    assert not prefill and batch == [a]
    assert sched.num_preemptions == 1 and b.block_table == [] and sched.waiting[0] is b
    sched.finish(a)
    batch, prefill = sched.schedule()
    assert prefill and batch == [b] and len(b.block_table) == 3  # recomputes prompt + its token


def test_no_block_leaks_over_random_lifetimes():
    rng = random.Random(0)
    bm = BlockManager(num_blocks=40, block_size=4)
    sched = Scheduler(bm, max_num_seqs=6, max_num_batched_tokens=64)
    live: list[Sequence] = []
    finished = 0
    for step in range(3000):
        if rng.random() < 0.3 and len(live) < 20:
            s = seq(rng.randint(1, 30))
            live.append(s)
            sched.add(s)
        batch, _ = sched.schedule()
        for s in batch:
            s.num_cached_tokens = len(s)
            s.append(1)
            if rng.random() < 0.05 or len(s) > 60:
                sched.finish(s)
                live.remove(s)
                finished += 1
        if live and rng.random() < 0.02:  # aborts of running or waiting requests
            victim = rng.choice(live)
            sched.finish(victim)
            live.remove(victim)
        used = sum(len(s.block_table) for s in live)
        assert used + bm.num_free_blocks == bm.num_blocks
        assert len(set(bm.free_blocks)) == bm.num_free_blocks
    for s in live:
        sched.finish(s)
    assert bm.num_free_blocks == bm.num_blocks and finished > 100
