"""POST /v1/completions: raw prompts (text or token ids) in, text out."""

from __future__ import annotations

from fastapi import Request

from ember.server.async_engine import EngineFailure, RequestGroup
from ember.server.errors import APIError
from ember.server.protocol import CompletionRequest
from ember.server.serving_common import (
    ServerState, check_model, check_prompt, completion_logprobs, new_id, sampling_params, sse_stream, usage,
)
from ember.server.streaming import CancellableSSEResponse, sse


def _prompt_ids(state: ServerState, prompt) -> list[list[int]]:
    """A string, a list of strings, one token-id list, or a list of token-id lists."""
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    return [state.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompt]


async def create_completion(state: ServerState, req: CompletionRequest, raw: Request):
    check_model(state, req.model)
    prompts = _prompt_ids(state, req.prompt)
    work = []  # choice index = prompt index * n + i
    for ids in prompts:
        max_tokens = check_prompt(state, ids, req.max_tokens)
        work += [(ids, sampling_params(state, req, max_tokens, req.logprobs, i)) for i in range(req.n)]
    group = state.engine.submit(work)
    head = {"id": new_id("cmpl"), "created": state.created, "model": state.model_name}
    num_prompt = sum(len(ids) for ids in prompts)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return CancellableSSEResponse(_stream(state, group, head, num_prompt, include_usage))
    return await _complete(state, group, head, num_prompt, raw)


async def _complete(state, group: RequestGroup, head, num_prompt, raw: Request) -> dict:
    n = len(group.prompts)
    texts, reasons, counts, lps = [[] for _ in range(n)], [None] * n, [0] * n, [[] for _ in range(n)]
    try:
        async for ev in state.engine.stream(group, raw.is_disconnected):
            texts[ev.index].append(ev.text)
            if ev.logprobs is not None:
                lps[ev.index].append(ev.logprobs)
            if ev.finished:
                reasons[ev.index], counts[ev.index] = ev.finish_reason, ev.num_output_tokens
    except EngineFailure as exc:
        raise APIError(exc.status, str(exc)) from None
    finally:
        state.engine.release(group)
    choices = [
        {"index": i, "text": "".join(texts[i]), "finish_reason": reasons[i],
         "logprobs": completion_logprobs(state.tokenizer, lps[i], 0) if group.prompts[i][1].logprobs is not None
         else None}
        for i in range(n)
    ]
    return {**head, "object": "text_completion", "choices": choices, "usage": usage(num_prompt, sum(counts))}


def _stream(state, group: RequestGroup, head, num_prompt, include_usage):
    n = len(group.prompts)
    want_logprobs = group.prompts[0][1].logprobs is not None
    pending_lp, offsets, counts = [[] for _ in range(n)], [0] * n, [0] * n
    extra = {"usage": None} if include_usage else {}

    async def chunks():
        async for ev in state.engine.stream(group):
            i = ev.index
            if ev.logprobs is not None:
                pending_lp[i].append(ev.logprobs)
            if not ev.text and not ev.finished:
                continue  # logprobs of a token without visible text ride on the next chunk
            lp = None
            if want_logprobs:
                lp = completion_logprobs(state.tokenizer, pending_lp[i], offsets[i])
                pending_lp[i] = []
            offsets[i] += len(ev.text)
            if ev.finished:
                counts[i] = ev.num_output_tokens
            choice = {"index": i, "text": ev.text, "logprobs": lp, "finish_reason": ev.finish_reason if ev.finished else None}
            yield sse({**head, "object": "text_completion", "choices": [choice], **extra})

    def usage_chunk():
        return {**head, "object": "text_completion", "choices": [], "usage": usage(num_prompt, sum(counts))}

    return sse_stream(state, group, chunks(), usage_chunk if include_usage else None)
