"""One request's tokens, cache blocks and progress through the engine."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from ember.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class TokenLogprobs:
    """Log-probability of the chosen token and of the most likely ones at one step."""

    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)


_ids = itertools.count()


class Sequence:
    """Prompt and generated tokens of one request; ``block_table`` lists its KV-cache blocks."""

    def __init__(self, prompt_token_ids: list[int], params: SamplingParams, seed: int, request_id=None):
        self.seq_id = next(_ids)
        self.request_id = request_id if request_id is not None else self.seq_id
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.seed = seed  # the sampling RNG is keyed by (seed, number of generated tokens)
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_cached_tokens = 0  # tokens whose K/V are in the cache (computed or reused)
        # Prefix-cache keys of its full blocks, as far as computed; they depend on the tokens
        # only, so they stay valid when the sequence is preempted and its blocks freed.
        self.block_hashes: list[bytes] = []
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.logprobs: list[TokenLogprobs] = []

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)
