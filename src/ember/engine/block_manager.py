"""Hands out fixed-size KV-cache blocks to sequences and takes them back.

Block ``i`` covers cache slots ``i*block_size .. (i+1)*block_size - 1`` in every layer.
"""

from __future__ import annotations

from collections import deque

from ember.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("need at least one block of at least one slot")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, seq: Sequence) -> bool:
        return self.blocks_needed(len(seq)) - len(seq.block_table) <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` enough blocks for all its current tokens."""
        need = self.blocks_needed(len(seq)) - len(seq.block_table)
        if need > self.num_free_blocks:
            raise RuntimeError("allocate() without can_allocate()")
        seq.block_table.extend(self.free_blocks.popleft() for _ in range(need))

    def can_append(self, seq: Sequence) -> bool:
        """Whether one more token fits (a new block is needed only at a block boundary)."""
        return len(seq) <= len(seq.block_table) * self.block_size or self.num_free_blocks > 0

    def append_slot(self, seq: Sequence) -> None:
        """Make room for the token ``seq`` is about to compute (its last one)."""
        if len(seq) > len(seq.block_table) * self.block_size:
            seq.block_table.append(self.free_blocks.popleft())

    def free(self, seq: Sequence) -> None:
        self.free_blocks.extend(seq.block_table)
        seq.block_table = []
        seq.num_cached_tokens = 0

    def slot(self, seq: Sequence, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size
