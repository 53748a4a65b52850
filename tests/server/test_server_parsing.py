"""Reasoning and tool-call parsing of generated text, fed whole and in every chunking."""

from __future__ import annotations

import json

import pytest

from ember.server.output_parser import ChatOutputParser, prompt_opens_thinking
from ember.server.tool_parser import Qwen3ToolParser, parse_tool_call

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}\n</tool_call>'


def run(text: str, chunk: int, starts_in_thinking=False, tools=True):
    parser = ChatOutputParser(starts_in_thinking, tools)
    for i in range(0, len(text), chunk):
        parser.feed(text[i:i + chunk])
    parser.flush()
    return parser.total


@pytest.mark.parametrize("chunk", [1, 2, 5, 1000])
def test_thinking_answer_and_tool_calls(chunk):
    text = "<think>\nThe user wants weather.\n</think>\n\nLet me check." + "\n\n" + CALL + "\n" + CALL.replace("Paris", "Oslo")
    out = run(text, chunk)
    assert out.reasoning == "The user wants weather.\n"
    assert out.content == "Let me check."
    assert [c.name for c in out.tool_calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.arguments)["city"] for c in out.tool_calls] == ["Paris", "Oslo"]
    assert json.loads(out.tool_calls[0].arguments)["unit"] == "°C"
    assert out.tool_calls[0].id != out.tool_calls[1].id


@pytest.mark.parametrize("chunk", [1, 3, 1000])
@pytest.mark.parametrize("body", ['{"name": "f" oops}', '{"arguments": {}}', "[1, 2]", '{"name": "f", "arguments": 3}'])
def test_malformed_tool_call_is_plain_content(chunk, body):
    text = f"Hi <tool_call>{body}</tool_call>"
    out = run(text, chunk)
    assert out.tool_calls == [] and out.content == text


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_unterminated_tool_call(chunk):
    assert run('<tool_call>{"name": "f", "arguments": {"a": 1}}', chunk).tool_calls[0].name == "f"
    cut = run('<tool_call>{"name": "f", "argu', chunk)
    assert cut.tool_calls == [] and cut.content == '<tool_call>{"name": "f", "argu'


def test_thinking_off_and_prompt_opened_thinking():
    # enable_thinking=false: the template wrote an empty think block, the model answers directly.
    out = run("Just the answer.", 3)
    assert out.reasoning == "" and out.content == "Just the answer."
    # A template that opens <think> in the prompt: the output starts inside the thinking.
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    out = run("pondering</think>\n\nanswer", 2, starts_in_thinking=True)
    assert (out.reasoning, out.content) == ("pondering", "answer")


def test_tools_off_leaves_tags_in_content():
    out = run("a " + CALL, 4, tools=False)
    assert out.tool_calls == [] and out.content == "a " + CALL


def test_text_that_only_looks_like_a_tag_is_released():
    parser = Qwen3ToolParser()
    pieces = parser.feed("x <tool") + parser.feed("box> y") + parser.flush()
    assert "".join(v for k, v in pieces if k == "content") == "x <toolbox> y"


def test_parse_tool_call_accepts_string_arguments():
    call = parse_tool_call('{"name": "f", "arguments": "{\\"a\\": [1]}"}')
    assert call and call.name == "f" and json.loads(call.arguments) == {"a": [1]}
    assert call.to_openai()["type"] == "function" and call.to_openai()["id"].startswith("call_")
