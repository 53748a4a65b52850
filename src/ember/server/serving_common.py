"""What both completion endpoints share: the served model, sampling parameters, limits, logprobs."""

from __future__ import annotations

import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field

from collections.abc import AsyncIterator, Callable

from fastapi import Request

from ember.engine.sequence import TokenLogprobs
from ember.errors import EmberError
from ember.sampling_params import SamplingParams
from ember.server.async_engine import AsyncEngine, EngineFailure, RequestGroup
from ember.server.errors import APIError, api_error_from, error_body
from ember.server.metrics import ServerMetrics
from ember.server.protocol import SamplingFields
from ember.server.streaming import DONE, sse
from ember.tokenizer.byte_pieces import piece_bytes

_SEED_RANGE = 2**63  # the sampler keys its RNG by an int64 seed


@dataclass
class ServerState:
    """Everything a route needs; built once by ``build_app``."""

    llm: object  # ember.LLM: its engine is only touched by the engine thread
    engine: AsyncEngine
    model_name: str
    metrics: ServerMetrics
    api_key: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.llm.engine.max_model_len  # fixed at load time, safe to read from any thread

    @property
    def vocab_size(self) -> int:
        return self.llm.engine.config.vocab_size


def state_of(request: Request) -> ServerState:
    return request.app.state.ember


def check_model(state: ServerState, model: str | None) -> None:
    if model is not None and model != state.model_name:
        raise APIError(404, f"The model {model!r} does not exist; this server serves {state.model_name!r}.",
                       param="model", code="model_not_found")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def check_prompt(state: ServerState, ids: list[int], max_tokens: int | None) -> int:
    """Refuse a prompt that cannot fit with its max_tokens (400); returns the max_tokens to use
    (unset: the rest of the context)."""
    if not ids:
        raise APIError(400, "The prompt is empty.", param="prompt")
    if any(not 0 <= t < state.vocab_size for t in ids):
        raise APIError(400, f"Prompt token ids must be in [0, {state.vocab_size}).", param="prompt")
    room = state.max_model_len - len(ids)
    if room < 1:
        raise APIError(400, f"The prompt has {len(ids)} tokens, but the context holds {state.max_model_len} "
                       "(prompt plus at least one generated token).", code="context_length_exceeded")
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise APIError(400, f"This model's context holds {state.max_model_len} tokens, but {len(ids)} prompt "
                       f"tokens plus max_tokens={max_tokens} were asked for.", param="max_tokens",
                       code="context_length_exceeded")
    return max_tokens


def sampling_params(state: ServerState, req: SamplingFields, max_tokens: int, logprobs: int | None,
                    index: int) -> SamplingParams:
    """The request's parameters over generation_config.json's defaults (LLM.default_sampling_params).

    Choice ``index`` of n gets seed + index, so the n choices differ and each reproduces."""
    seed = None if req.seed is None else (req.seed + index) % _SEED_RANGE
    try:
        return state.llm.default_sampling_params(
            temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            repetition_penalty=req.repetition_penalty, seed=seed, max_tokens=max_tokens,
            stop=req.stop, ignore_eos=req.ignore_eos or None, logprobs=logprobs,
        )
    except EmberError as exc:
        raise api_error_from(exc) from None


# ----- logprobs ------------------------------------------------------------------------------------

def token_bytes(tokenizer, token_id: int) -> bytes:
    """The raw bytes of one token (a token may hold part of a UTF-8 character)."""
    piece = tokenizer.id_to_token(token_id)
    return b"" if piece is None else piece_bytes(piece)


def token_text(tokenizer, token_id: int) -> str:
    return token_bytes(tokenizer, token_id).decode("utf-8", errors="replace")


def chat_logprobs_entry(tokenizer, lp: TokenLogprobs) -> dict:
    """One entry of choices[].logprobs.content, OpenAI's chat format."""
    def item(tid: int, value: float) -> dict:
        raw = token_bytes(tokenizer, tid)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": _finite(value), "bytes": list(raw)}

    entry = item(lp.token_id, lp.logprob)
    entry["top_logprobs"] = [item(t, v) for t, v in sorted(lp.top.items(), key=lambda kv: -kv[1])]
    return entry


def completion_logprobs(tokenizer, lps: list[TokenLogprobs], start_offset: int) -> dict:
    """The completions format: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, values, tops, offsets = [], [], [], []
    offset = start_offset
    for lp in lps:
        text = token_text(tokenizer, lp.token_id)
        tokens.append(text)
        values.append(_finite(lp.logprob))
        tops.append({token_text(tokenizer, t): _finite(v) for t, v in sorted(lp.top.items(), key=lambda kv: -kv[1])})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _finite(value: float) -> float:
    # JSON has no -inf; a token of probability 0 gets the most negative float instead.
    return value if value > -1e38 else -9999.0


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def sse_stream(state: ServerState, group: RequestGroup, chunks: AsyncIterator[str],
                     usage_chunk: Callable[[], dict] | None) -> AsyncIterator[str]:
    """A streamed response's frame, shared by chat and completions: the ``chunks``, then the
    usage chunk (``stream_options.include_usage``) and ``[DONE]``. An engine failure becomes
    an error event; however the stream ends (a client gone included), the request is released."""
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk
        if usage_chunk is not None:
            yield sse(usage_chunk())
        yield DONE
    except EngineFailure as exc:
        yield sse(error_body(exc.status, str(exc)))
        yield DONE
    finally:
        state.engine.release(group)
