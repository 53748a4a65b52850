"""Tool calls and thinking end to end: a scripted engine emits known text as real token ids."""

from __future__ import annotations

import json

import openai
import pytest

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
MESSAGES = [{"role": "user", "content": "Weather in Paris and Oslo?"}]
THINK = "<think>\nTwo cities, two calls.\n</think>\n\n"
CALLS = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')


@pytest.fixture
def script(scripted_server):
    """Call with the text the model should 'generate' for the next requests."""
    def set_script(text: str) -> list[int]:
        ids = scripted_server.llm.tokenizer.encode(text)
        scripted_server.llm.engine.script = ids
        return ids
    return set_script


@pytest.fixture(scope="module")
def client(scripted_server):
    return openai.OpenAI(base_url=scripted_server.base_url, api_key="unused", max_retries=0, timeout=60)


def test_tags_are_single_unskipped_tokens(scripted_server):
    # <think> and <tool_call> are added tokens that are not "special", so the detokenizer
    # (skip_special_tokens=True) keeps them in the text the parsers see.
    tok = scripted_server.llm.tokenizer
    for tag in ("<think>", "</think>", "<tool_call>", "</tool_call>"):
        (tid,) = tok.encode(tag)
        assert tid not in tok.special_token_ids


def test_tool_calls_and_reasoning(scripted_server, script, client):
    script(THINK + CALLS)
    resp = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=100)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.reasoning_content == "Two cities, two calls.\n"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("function", "get_weather", {"city": "Paris"}), ("function", "get_weather", {"city": "Oslo"})]
    assert calls[0].id != calls[1].id


def test_streamed_tool_calls(script, client):
    script(THINK + "Checking." + CALLS)
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=100,
                                                 stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    assert deltas[0].role == "assistant"
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "Two cities, two calls.\n"
    assert "".join(d.content or "" for d in deltas) == "Checking."
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert [(tc.index, tc.function.name, json.loads(tc.function.arguments)["city"]) for tc in calls] == [
        (0, "get_weather", "Paris"), (1, "get_weather", "Oslo")]
    assert all(tc.id and tc.type == "function" for tc in calls)
    # Each call arrives in its own chunk as soon as its closing tag is generated.
    assert sum(1 for d in deltas if d.tool_calls) == 2
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_malformed_tool_call_falls_back_to_content(script, client):
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'
    script(text)
    choice = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=100).choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls and choice.message.content == text
    streamed = list(client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=100,
                                                   stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text


def test_without_tools_tags_stay_content(script, client):
    script(CALLS)
    choice = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=100).choices[0]
    assert choice.finish_reason == "stop" and choice.message.content == CALLS and not choice.message.tool_calls


def test_thinking_on_and_off(script, client):
    script(THINK + "Paris is sunny.")
    on = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=100).choices[0].message
    assert (on.reasoning_content, on.content) == ("Two cities, two calls.\n", "Paris is sunny.")
    script("Paris is sunny.")  # thinking off: the prompt holds the empty think block, no tags come out
    off = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=100,
                                         extra_body={"chat_template_kwargs": {"enable_thinking": False}}).choices[0]
    assert off.message.reasoning_content is None and off.message.content == "Paris is sunny."


def test_max_tokens_cuts_a_call(script, client):
    ids = script(CALLS)
    choice = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS,
                                            max_tokens=len(ids) - 3).choices[0]
    # The first call completed; the cut second one comes back as text, and the reason is "length".
    assert choice.finish_reason == "length"
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
    assert choice.message.content.startswith("<tool_call>")
