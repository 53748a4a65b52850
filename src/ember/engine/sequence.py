"""One request's tokens, cache blocks and progress through the engine."""

from __future__ import annotations

import enum
from array import array
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
PENDING_TOKEN = -1  # a token id not known on the host yet (see Sequence.num_pending)


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
        self.block_table = array("i")  # int32 block ids: the runner copies them as raw bytes
        self.num_cached_tokens = 0  # tokens whose K/V are in the cache (computed or reused)
        # Prefix-cache keys of its full blocks, as far as computed; they depend on the tokens
        # only, so they stay valid when the sequence is preempted and its blocks freed.
        self.block_hashes: list[bytes] = []
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.logprobs: list[TokenLogprobs] = []
        # With async scheduling the next step is launched before this one's tokens reach the
        # host: the last ``num_pending`` token ids are placeholders (PENDING_TOKEN) whose values
        # are still on the device. Lengths and positions count them; the host fills them in.
        self.num_pending = 0
        self.num_registered_blocks = 0  # leading blocks registered in the prefix cache
        self.length_limit: int | None = None  # total tokens at which it stops (max_tokens, context)
        self.text_at_end = False  # detokenize once at the end, not token by token

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

    @property
    def reached_length_limit(self) -> bool:
        """It will stop on length once its pending tokens land: schedule nothing more for it."""
        return self.length_limit is not None and len(self.token_ids) >= self.length_limit

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def append_pending(self) -> None:
        """A token was sampled on the device but not read yet."""
        self.token_ids.append(PENDING_TOKEN)
        self.num_pending += 1

    def resolve_pending(self, token_id: int) -> int:
        """Fill in the oldest pending token; returns its position."""
        pos = len(self.token_ids) - self.num_pending
        self.token_ids[pos] = token_id
        self.num_pending -= 1
        return pos

    def drop_pending(self) -> None:
        """Forget tokens still in flight (the sequence finished or was aborted before them)."""
        if self.num_pending:
            del self.token_ids[-self.num_pending:]
            self.num_pending = 0
