"""What a request asks of sampling and stopping, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from ember.errors import InvalidRequestError


@dataclass
class SamplingParams:
    """Sampling and stopping parameters of one request (vLLM's names and meanings).

    ``temperature=0`` is greedy. ``top_k`` <= 0 and ``top_p`` = 1 and ``min_p`` = 0 are off.
    ``logprobs=N`` returns the sampled token's log-probability and the N most likely tokens'
    at every step (N = 0: only the sampled token's).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.stop_token_ids = list(self.stop_token_ids or [])
        checks = [
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (isinstance(self.top_k, int), f"top_k must be an integer, got {self.top_k!r}"),
            (self.max_tokens is None or self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}"),
            (self.min_tokens >= 0, f"min_tokens must be >= 0, got {self.min_tokens}"),
            (-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (-2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, f"logprobs must be in [0, 20], got {self.logprobs}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequestError(message)
        # Values past what the device tensors hold (int32 top_k, int64 seed) keep their meaning:
        # a top_k beyond any vocabulary keeps every token, like 0 does; a seed wraps to int64.
        if not -(2**31) < self.top_k < 2**31:
            self.top_k = 0
        if self.seed is not None:
            self.seed = (self.seed + 2**63) % 2**64 - 2**63

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    @property
    def needs_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1
