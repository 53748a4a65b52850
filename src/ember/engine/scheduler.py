"""Decides which sequences run in the next step, and how many of their tokens.

Each step has a budget of ``max_num_batched_tokens`` new tokens, spent in this order:

1. every running sequence whose prompt is in the cache decodes one token;
2. running sequences part-way through their prompt get the next chunk of it;
3. waiting sequences are admitted (FCFS) while blocks and budget last, reusing cached prefix
   blocks, and get a first chunk.

So a long prompt is prefilled over several steps and never stalls decoding. Admission reserves
blocks for the whole prompt, so an admitted prompt never waits for blocks; only decoding grows
a sequence. When a decode needs a block and none is free, the most recently admitted running
sequence is preempted: its blocks are freed (kept in the prefix cache while space allows) and it
goes back to the front of the queue to be recomputed later, so no request is ever lost. No new
sequence is admitted in a step that preempted, so a victim is not immediately re-admitted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ember.engine.block_manager import BlockManager
from ember.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """One step's work: ``seqs[i]`` computes its next ``num_new_tokens[i]`` uncached tokens and,
    if ``produces_token[i]`` (the chunk reaches its last token), samples a new one."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    produces_token: list[bool] = field(default_factory=list)

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)
        self.produces_token.append(seq.num_cached_tokens + num_new_tokens == len(seq))

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def num_batched_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_pure_decode(self) -> bool:
        """Every row is one token that yields the next one: the (CUDA-graph) decode path applies."""
        return all(n == 1 for n in self.num_new_tokens) and all(self.produces_token)

    @property
    def sampling_seqs(self) -> list[Sequence]:
        """The sequences that get a new token this step, in batch order."""
        return [s for s, p in zip(self.seqs, self.produces_token) if p]


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        if max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {max_num_batched_tokens}")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # A running sequence must be able to decode every step, so never more than the budget.
        self.max_running = min(max_num_seqs, max_num_batched_tokens)
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()  # in admission order
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @staticmethod
    def _is_prefilling(seq: Sequence) -> bool:
        return len(seq) - seq.num_cached_tokens > 1

    def schedule(self) -> ScheduledBatch:
        bm = self.block_manager
        batch = ScheduledBatch()
        preempted = False

        # 1. One token for every sequence that is decoding; preempt from the back for blocks.
        kept: deque[Sequence] = deque()
        while self.running:
            seq = self.running.popleft()
            if self._is_prefilling(seq) or seq.reached_length_limit:
                kept.append(seq)  # a prompt chunk comes below; a length-finished one waits for its tokens
                continue
            while not bm.can_append(seq):
                preempted = True
                if self.running:
                    self._preempt(self.running.pop())
                else:
                    self._preempt(seq)
                    break
            else:
                bm.append_slot(seq)
                batch.add(seq, 1)
                kept.append(seq)
        self.running = kept
        budget = self.max_num_batched_tokens - len(batch)

        # 2. The next chunk of prompts already admitted (their blocks are reserved).
        for seq in self.running:
            if budget == 0:
                break
            if self._is_prefilling(seq):
                n = min(len(seq) - seq.num_cached_tokens, budget)
                batch.add(seq, n)
                budget -= n

        # 3. Admit waiting sequences while the budget, the sequence limit and free blocks allow.
        while self.waiting and budget > 0 and not preempted and len(self.running) < self.max_running:
            seq = self.waiting[0]
            if not bm.can_allocate(seq):
                break
            self.waiting.popleft()
            bm.allocate(seq)  # sets num_cached_tokens to the reused prefix
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            n = min(len(seq) - seq.num_cached_tokens, budget)
            batch.add(seq, n)
            budget -= n
        return batch

    def mark_computed(self, batch: ScheduledBatch) -> None:
        """Once the batch's forward pass is launched: its tokens are in the cache in stream
        order (full blocks get cached). Call before appending the sampled tokens."""
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            if not seq.is_finished:
                self.block_manager.mark_computed(seq, n)

    def _preempt(self, seq: Sequence) -> None:
        self.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.block_manager.free(seq)
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Take a finished (or aborted) sequence out and free its blocks."""
        seq.status = SequenceStatus.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
