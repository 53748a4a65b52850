"""Prefix caching in the block manager: chain hashing, sharing, ref counts, LRU eviction, and
no leaked or mis-shared block over thousands of random request lifetimes."""

from __future__ import annotations

import random
from collections import Counter

from ember.engine.block_manager import BlockManager
from ember.engine.scheduler import Scheduler
from ember.engine.sequence import Sequence
from ember.sampling_params import SamplingParams


def seq(tokens: list[int]) -> Sequence:
    return Sequence(tokens, SamplingParams(), seed=0)


def computed(bm: BlockManager, tokens: list[int]) -> Sequence:
    """A sequence admitted and fully prefilled (its full blocks registered)."""
    s = seq(tokens)
    bm.allocate(s)
    bm.mark_computed(s, len(s) - s.num_cached_tokens)
    return s


def check_blocks(bm: BlockManager, live: list[Sequence]) -> None:
    """Every block is free, evictable-cached or owned, and ref counts match the block tables."""
    owners = Counter(b for s in live for b in s.block_table)
    free, evictable = set(bm.free_blocks), set(bm.evictable)
    assert len(free) == len(bm.free_blocks) and not free & evictable
    for b in range(bm.num_blocks):
        assert bm.ref_counts[b] == owners[b]
        if owners[b]:
            assert b not in free and b not in evictable
        else:
            assert (b in free) != (b in evictable)
        assert b not in evictable or b in bm.block_keys
        assert b not in free or b not in bm.block_keys
    assert {b: k for k, b in bm.cached_blocks.items()} == bm.block_keys


def test_same_prefix_shares_blocks_and_different_prefix_does_not():
    bm = BlockManager(num_blocks=32, block_size=4)
    a = computed(bm, list(range(12)))
    b = seq(list(range(8)) + [50, 51, 52])
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert b.num_cached_tokens == 8 and [bm.ref_counts[x] for x in b.block_table] == [2, 2, 1]
    same = seq(list(range(12)))
    bm.allocate(same)  # never the whole prompt: its last block is computed again
    assert same.num_cached_tokens == 8 and same.block_table[2] != a.block_table[2]
    other = seq([99] + list(range(1, 12)))
    bm.allocate(other)
    assert other.num_cached_tokens == 0 and not set(other.block_table) & set(a.block_table)
    assert bm.prefix_cache_queries == 12 + 11 + 12 + 12 and bm.prefix_cache_hits == 16
    check_blocks(bm, [a, b, same, other])
    for s in (a, b, same, other):
        bm.free(s)
    check_blocks(bm, [])
    assert bm.num_free_blocks == 32


def test_hash_chain_keeps_equal_blocks_at_different_positions_apart():
    bm = BlockManager(num_blocks=32, block_size=4)
    a = computed(bm, [7] * 12 + [1])
    assert len({bm.block_keys[b] for b in a.block_table[:3]}) == 3  # same tokens, 3 keys
    b = seq([8] * 4 + [7] * 8 + [1])  # blocks 2-3 equal a's, after a different first block
    bm.allocate(b)
    assert b.num_cached_tokens == 0
    c = seq([7] * 8 + [2])
    bm.allocate(c)
    assert c.num_cached_tokens == 8 and c.block_table[:2] == a.block_table[:2]


def test_generated_tokens_fill_cacheable_blocks():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = computed(bm, [1, 2, 3])
    assert not bm.block_keys  # a partial block is not cached
    a.append(4)
    bm.mark_computed(a, 1)  # decoding wrote the 4th token: the block is full now
    assert bm.block_keys == {a.block_table[0]: a.block_hashes[0]}
    bm.free(a)
    b = seq([1, 2, 3, 4, 5])
    bm.allocate(b)
    assert b.num_cached_tokens == 4


def test_disabled_prefix_caching_reuses_nothing():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = computed(bm, list(range(9)))
    bm.free(a)
    b = seq(list(range(9)))
    bm.allocate(b)
    assert b.num_cached_tokens == 0 and not bm.block_keys and bm.prefix_cache_queries == 0


def test_lru_eviction_takes_the_least_recently_released_block():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = computed(bm, [1, 2, 3, 4])
    b = computed(bm, [5, 6, 7, 8])
    (a0, a1), (b0, b1) = a.block_table, b.block_table
    bm.free(a)
    bm.free(b)  # each releases its tail first, so a chain's head outlives its tail
    assert list(bm.evictable) == [a1, a0, b1, b0] and bm.num_free_blocks == 4
    e = seq([5, 6, 0])  # reuses b0 and needs one fresh block: the LRU one, a1
    bm.allocate(e)
    assert list(e.block_table) == [b0, a1] and a1 not in bm.block_keys and a0 in bm.block_keys
    bm.free(e)  # a1 is no longer cached: back to the free list; b0 is the most recent now
    assert list(bm.evictable) == [a0, b1, b0] and list(bm.free_blocks) == [a1]
    d = seq([9] * 5)  # three fresh blocks: the free one first, then a0 and b1 are evicted
    bm.allocate(d)
    assert list(d.block_table) == [a1, a0, b1] and bm.block_keys == {b0: b.block_hashes[0]}
    check_blocks(bm, [d])


def test_no_leaks_or_wrong_sharing_over_random_lifetimes():
    """Random prompts over a few shared prefixes, chunked prefill, decode, preemption, aborts.

    A fake cache records, for every written slot, the exact token prefix its K/V came from;
    every token a live sequence treats as cached must be backed by its own prefix.
    """
    rng = random.Random(0)
    bm = BlockManager(num_blocks=40, block_size=4)
    sched = Scheduler(bm, max_num_seqs=6, max_num_batched_tokens=24)
    prefixes = [[rng.randrange(50) for _ in range(rng.randint(4, 20))] for _ in range(4)]
    kv: dict[int, tuple[int, ...]] = {}
    live: list[Sequence] = []
    finished = 0
    for _ in range(4000):
        if rng.random() < 0.3 and len(live) < 20:
            suffix = [rng.randrange(50) for _ in range(rng.randint(1, 12))]
            s = seq(rng.choice(prefixes)[: rng.randint(0, 20)] + suffix)
            live.append(s)
            sched.add(s)
        batch = sched.schedule()
        assert batch.num_batched_tokens <= 24
        for s, n in zip(batch.seqs, batch.num_new_tokens):  # the forward pass writes K/V
            for p in range(s.num_cached_tokens, s.num_cached_tokens + n):
                kv[bm.slot(s, p)] = tuple(s.token_ids[: p + 1])
        sched.mark_computed(batch)
        for s in batch.sampling_seqs:
            s.append(rng.randrange(50))
            if rng.random() < 0.05 or len(s) > 60:
                sched.finish(s)
                live.remove(s)
                finished += 1
        if live and rng.random() < 0.02:  # aborts of running or waiting requests
            victim = rng.choice(live)
            sched.finish(victim)
            live.remove(victim)
        check_blocks(bm, live)
        for s in sched.running:
            for p in range(s.num_cached_tokens):
                assert kv[bm.slot(s, p)] == tuple(s.token_ids[: p + 1])
    assert sched.num_preemptions > 10 and bm.prefix_cache_hits > 100 and finished > 100
    for _ in range(100):  # everything left still finishes: no request is lost
        batch = sched.schedule()
        sched.mark_computed(batch)
        for s in batch.sampling_seqs:
            sched.finish(s)
            live.remove(s)
    assert not live and not sched.has_unfinished()
    check_blocks(bm, [])
    assert bm.num_free_blocks == bm.num_blocks
