"""Hands out fixed-size KV-cache blocks to sequences and takes them back, with prefix caching.

Block ``i`` covers cache slots ``i*block_size .. (i+1)*block_size - 1`` in every layer.

Prefix caching: once a block is completely filled with computed tokens (prompt or generated)
it is registered under a chain hash of (previous block's hash, its token ids), so equal token
runs at different positions or after different prefixes never share a key. Blocks are
reference-counted; a sequence admitted later reuses the longest run of registered blocks that
matches the start of its tokens. A registered block whose last user is gone is kept in an LRU
pool and only evicted (least recently released first) when a fresh block is needed.

Every block is in exactly one state: free (never registered, ref 0), evictable (registered,
ref 0, in ``evictable``) or in use (ref > 0, possibly registered and shared).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque

from ember.engine.sequence import Sequence


def hash_block(parent: bytes, token_ids: list[int]) -> bytes:
    """Key of a full block: 128-bit BLAKE2 of its parent's key and its token ids.

    A cryptographic hash, so two different prefixes never share blocks by accident (or by a
    crafted prompt), and keys are stable across processes.
    """
    return hashlib.blake2b(parent + array("q", token_ids).tobytes(), digest_size=16).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("need at least one block of at least one slot")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.free_blocks: deque[int] = deque(range(num_blocks))
        self.ref_counts = [0] * num_blocks
        self.cached_blocks: dict[bytes, int] = {}  # key -> registered block
        self.block_keys: dict[int, bytes] = {}  # registered block -> key
        self.evictable: OrderedDict[int, None] = OrderedDict()  # ref-0 registered blocks, LRU first
        # Counted in tokens: prompt tokens looked up at admission, and those found in the cache.
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks a new allocation can take (never used, or cached but evictable)."""
        return len(self.free_blocks) + len(self.evictable)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ----- prefix cache ----------------------------------------------------------------------
    def _block_hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """``seq.block_hashes``, extended to at least its first ``num_blocks`` full blocks (each
        key is computed once per sequence)."""
        hashes, bs = seq.block_hashes, self.block_size
        for i in range(len(hashes), num_blocks):
            hashes.append(hash_block(hashes[-1] if hashes else b"", seq.token_ids[i * bs : (i + 1) * bs]))
        return hashes

    def _match_prefix(self, seq: Sequence) -> list[int]:
        """Registered blocks holding the longest cached run of ``seq``'s leading full blocks.

        Never the whole sequence: its last token must be computed to get logits.
        """
        if not self.enable_prefix_caching:
            return []
        matched = []
        num_blocks = (len(seq) - 1) // self.block_size
        for key in self._block_hashes(seq, num_blocks)[:num_blocks]:
            block = self.cached_blocks.get(key)
            if block is None:
                break
            matched.append(block)
        return matched

    def mark_computed(self, seq: Sequence, num_new_tokens: int) -> None:
        """Record that ``num_new_tokens`` more of ``seq``'s tokens are in the cache (or will be,
        in stream order, once the launched step runs); register the blocks this completed."""
        seq.num_cached_tokens += num_new_tokens
        self.register_full_blocks(seq)

    def register_full_blocks(self, seq: Sequence) -> None:
        """Register ``seq``'s computed full blocks whose token ids are all known on the host
        (a block ending in a pending token waits until its value arrives)."""
        if not self.enable_prefix_caching or not seq.block_table:
            return
        known = min(seq.num_cached_tokens, len(seq) - seq.num_pending)
        full = min(known // self.block_size, len(seq.block_table))
        if full <= seq.num_registered_blocks:  # most decode steps: no block completed
            return
        hashes = self._block_hashes(seq, full)
        for i in range(seq.num_registered_blocks, full):
            block = seq.block_table[i]
            # A block reused from the cache is registered already; an identical block computed
            # concurrently by another sequence stays private and is freed normally.
            if block not in self.block_keys and hashes[i] not in self.cached_blocks:
                self.cached_blocks[hashes[i]] = block
                self.block_keys[block] = hashes[i]
        seq.num_registered_blocks = full

    # ----- allocation ------------------------------------------------------------------------
    def _take_fresh_block(self) -> int:
        if self.free_blocks:
            block = self.free_blocks.popleft()
        else:  # evict the least recently released cached block
            block, _ = self.evictable.popitem(last=False)
            del self.cached_blocks[self.block_keys.pop(block)]
        self.ref_counts[block] = 1
        return block

    def _ref(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.evictable[block]
        self.ref_counts[block] += 1

    def _fits(self, seq: Sequence, matched: list[int]) -> bool:
        fresh = self.blocks_needed(len(seq)) - len(matched)
        revived = sum(self.ref_counts[b] == 0 for b in matched)  # matched blocks leave the LRU pool
        return fresh <= self.num_free_blocks - revived

    def can_allocate(self, seq: Sequence, use_prefix_cache: bool = True) -> bool:
        return self._fits(seq, self._match_prefix(seq) if use_prefix_cache else [])

    def allocate(self, seq: Sequence, use_prefix_cache: bool = True) -> None:
        """Give a sequence without blocks enough for all its current tokens, reusing cached
        leading blocks (``seq.num_cached_tokens`` says how many tokens that covers)."""
        if seq.block_table:
            raise RuntimeError("allocate() on a sequence that already has blocks")
        matched = self._match_prefix(seq) if use_prefix_cache else []
        if not self._fits(seq, matched):
            raise RuntimeError("allocate() without can_allocate()")
        if self.enable_prefix_caching and use_prefix_cache:
            self.prefix_cache_queries += len(seq)
            self.prefix_cache_hits += len(matched) * self.block_size
        for block in matched:
            self._ref(block)
        seq.block_table = array("i", matched)
        seq.block_table.extend(self._take_fresh_block() for _ in range(self.blocks_needed(len(seq)) - len(matched)))
        seq.num_cached_tokens = len(matched) * self.block_size
        seq.num_registered_blocks = len(matched)

    def can_append(self, seq: Sequence) -> bool:
        """Whether one more token fits (a new block is needed only at a block boundary)."""
        return len(seq) <= len(seq.block_table) * self.block_size or self.num_free_blocks > 0

    def append_slot(self, seq: Sequence) -> None:
        """Make room for the token ``seq`` is about to compute (its last one)."""
        if len(seq) > len(seq.block_table) * self.block_size:
            seq.block_table.append(self._take_fresh_block())

    def free(self, seq: Sequence) -> None:
        # Last block first, so a chain's tail is evicted before the head other prompts share.
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if block in self.block_keys:
                    self.evictable[block] = None
                else:
                    self.free_blocks.append(block)
        seq.block_table = array("i")
        seq.num_cached_tokens = 0
        seq.num_registered_blocks = 0

    def reset_prefix_cache(self) -> None:
        """Forget every cached block and the hit counters (all blocks must be free)."""
        if any(self.ref_counts):
            raise RuntimeError("reset_prefix_cache() while blocks are in use")
        self.free_blocks.extend(self.evictable)
        self.evictable.clear()
        self.cached_blocks.clear()
        self.block_keys.clear()
        self.prefix_cache_queries = self.prefix_cache_hits = 0

    def slot(self, seq: Sequence, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size
