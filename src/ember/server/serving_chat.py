"""POST /v1/chat/completions: chat template in; reasoning, content and tool calls out."""

from __future__ import annotations

from anyio import to_thread
from fastapi import Request

from ember.errors import EmberError
from ember.server.async_engine import EngineFailure, RequestGroup
from ember.server.errors import APIError, api_error_from
from ember.server.output_parser import ChatDelta, ChatOutputParser, prompt_opens_thinking
from ember.server.protocol import ChatCompletionRequest
from ember.server.serving_common import (
    ServerState, chat_logprobs_entry, check_model, check_prompt, new_id, sampling_params, sse_stream, usage,
)
from ember.server.streaming import CancellableSSEResponse, sse

# Template variables a client may not set through chat_template_kwargs (they are set here).
_RESERVED_TEMPLATE_KWARGS = {"self", "messages", "tools", "add_generation_prompt", "enable_thinking"}


def _render_prompt(state: ServerState, req: ChatCompletionRequest, tools) -> tuple[str, list[int]]:
    kwargs = dict(req.chat_template_kwargs or {})
    enable_thinking = kwargs.get("enable_thinking")
    kwargs = {k: v for k, v in kwargs.items() if k not in _RESERVED_TEMPLATE_KWARGS and k.isidentifier()}
    messages = [m.template_dict() for m in req.messages]
    text = state.tokenizer.apply_chat_template(messages, tools=tools, enable_thinking=enable_thinking, **kwargs)
    return text, state.tokenizer.encode(text)


def _finish_reason(reason: str | None, parser: ChatOutputParser) -> str | None:
    return "tool_calls" if reason == "stop" and parser.num_tool_calls else reason


def _delta_dict(delta: ChatDelta, first_tool_index: int) -> dict:
    out: dict = {}
    if delta.reasoning:
        out["reasoning_content"] = delta.reasoning
    if delta.content:
        out["content"] = delta.content
    if delta.tool_calls:
        out["tool_calls"] = [{"index": first_tool_index + k, **call.to_openai()}
                             for k, call in enumerate(delta.tool_calls)]
    return out


async def create_chat_completion(state: ServerState, req: ChatCompletionRequest, raw: Request):
    check_model(state, req.model)
    # tool_choice "none" hides the tools from the model; "required" and named choices cannot be
    # enforced without constrained decoding, so they behave like "auto".
    tools = None if not req.tools or req.tool_choice == "none" else [t.model_dump(exclude_none=True) for t in req.tools]
    try:
        prompt_text, ids = await to_thread.run_sync(_render_prompt, state, req, tools)
    except EmberError as exc:
        raise api_error_from(exc) from None
    max_tokens = check_prompt(state, ids, req.max_completion_tokens or req.max_tokens)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    params = [sampling_params(state, req, max_tokens, logprobs, i) for i in range(req.n)]
    group = state.engine.submit([(ids, p) for p in params])
    parsers = [ChatOutputParser(prompt_opens_thinking(prompt_text), tools is not None) for _ in range(req.n)]
    head = {"id": new_id("chatcmpl"), "created": state.created, "model": state.model_name}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return CancellableSSEResponse(_stream(state, group, parsers, head, len(ids), include_usage))
    return await _complete(state, group, parsers, head, len(ids), raw)


async def _complete(state, group: RequestGroup, parsers, head, num_prompt, raw: Request) -> dict:
    n = len(parsers)
    reasons, counts, logprobs = [None] * n, [0] * n, [[] for _ in range(n)]
    try:
        async for ev in state.engine.stream(group, raw.is_disconnected):
            parser = parsers[ev.index]
            parser.feed(ev.text)
            if ev.logprobs is not None:
                logprobs[ev.index].append(chat_logprobs_entry(state.tokenizer, ev.logprobs))
            if ev.finished:
                parser.flush()
                reasons[ev.index], counts[ev.index] = ev.finish_reason, ev.num_output_tokens
    except EngineFailure as exc:
        raise APIError(exc.status, str(exc)) from None
    finally:
        state.engine.release(group)
    choices = []
    for i, parser in enumerate(parsers):
        total = parser.total
        message = {"role": "assistant", "content": total.content or (None if total.tool_calls else ""),
                   "reasoning_content": total.reasoning or None}
        if total.tool_calls:
            message["tool_calls"] = [c.to_openai() for c in total.tool_calls]
        choices.append({"index": i, "message": message, "finish_reason": _finish_reason(reasons[i], parser),
                        "logprobs": {"content": logprobs[i]} if group.prompts[i][1].logprobs is not None else None})
    return {**head, "object": "chat.completion", "choices": choices, "usage": usage(num_prompt, sum(counts))}


def _stream(state, group: RequestGroup, parsers, head, num_prompt, include_usage):
    n = len(parsers)
    want_logprobs = group.prompts[0][1].logprobs is not None
    pending_lp, counts = [[] for _ in range(n)], [0] * n
    extra = {"usage": None} if include_usage else {}

    def chunk(index, delta, finish_reason=None):
        lp = None
        if want_logprobs:
            lp, pending_lp[index] = {"content": pending_lp[index]}, []
        choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}
        return sse({**head, "object": "chat.completion.chunk", "choices": [choice], **extra})

    async def chunks():
        for i in range(n):
            yield chunk(i, {"role": "assistant", "content": ""})
        async for ev in state.engine.stream(group):
            parser = parsers[ev.index]
            if ev.logprobs is not None:
                pending_lp[ev.index].append(chat_logprobs_entry(state.tokenizer, ev.logprobs))
            tools_before = parser.num_tool_calls
            delta = parser.feed(ev.text)
            if ev.finished:
                delta.merge(parser.flush())
                counts[ev.index] = ev.num_output_tokens
                yield chunk(ev.index, _delta_dict(delta, tools_before), _finish_reason(ev.finish_reason, parser))
            elif delta:
                yield chunk(ev.index, _delta_dict(delta, tools_before))

    def usage_chunk():
        return {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(num_prompt, sum(counts))}

    return sse_stream(state, group, chunks(), usage_chunk if include_usage else None)
