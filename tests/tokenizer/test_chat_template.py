"""Chat templates: the Qwen3 template renders exactly as transformers renders it, and a hostile
template is stopped by the sandbox with a TokenizerError."""

import itertools
import time
from pathlib import Path

import pytest

from ember.errors import TokenizerError
from ember.tokenizer import ChatTemplate

FOLDER = Path(__file__).resolve().parents[1] / "data" / "qwen3-tokenizer"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city (°C).",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "e.g. Zürich"},
                           "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {"type": "function", "function": {"name": "search", "description": "Search the <web> & more",
                                                 "parameters": {"type": "object", "properties": {}}}}

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello!"}],
    "system_user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi 你好"}],
    "multi_turn": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    "reasoning_in_content": [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nfirst thoughts\n</think>\n\nA1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "<think>\nsecond thoughts\n</think>\n\nA2"},
    ],
    "reasoning_field": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A", "reasoning_content": "because"},
    ],
    "tools": [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Zürich?"}],
    "tool_calls": [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "東京"}'}},
        ]},
        {"role": "tool", "content": "18°C, cloudy"},
        {"role": "tool", "content": "{\"temp\": 25}"},
        {"role": "assistant", "content": "Paris 18°C, Tokyo 25°C.", "tool_calls": None},
        {"role": "user", "content": "Thanks"},
    ],
    "tool_call_with_content": [
        {"role": "user", "content": "Search cats"},
        {"role": "assistant", "content": "<think>\nneed search\n</think>\n\nLet me look.",
         "tool_calls": [{"name": "search", "arguments": {}}]},
        {"role": "tool", "content": "cats are great"},
    ],
    "content_parts": [{"role": "user", "content": [{"type": "text", "text": "parts are dropped by Qwen3"}]}],
}
TOOLS = {"tools": [WEATHER_TOOL], "tool_calls": [WEATHER_TOOL, SEARCH_TOOL], "tool_call_with_content": [SEARCH_TOOL]}


@pytest.mark.parametrize("name,thinking,gen_prompt", list(itertools.product(
    CONVERSATIONS, ["unset", True, False], [True, False])))
def test_qwen3_template_matches_transformers(tok, hf, name, thinking, gen_prompt):
    messages, tools = CONVERSATIONS[name], TOOLS.get(name)
    extra = {} if thinking == "unset" else {"enable_thinking": thinking}
    expected = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=gen_prompt,
                                      tokenize=False, **extra)
    assert tok.apply_chat_template(messages, tools=tools, add_generation_prompt=gen_prompt, **extra) == expected
    ids = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=gen_prompt, tokenize=True,
                                 return_dict=False, **extra)
    assert tok.encode_chat(messages, tools=tools, add_generation_prompt=gen_prompt, **extra) == ids


def test_enable_thinking_none_is_undefined():
    template = ChatTemplate("{{ enable_thinking is defined }} {{ x }}")
    assert template.render([{"role": "user", "content": ""}], enable_thinking=None, x=1) == "False 1"


def test_helpers_behave_like_transformers():
    template = ChatTemplate(
        "{{ tools[0] | tojson }}|{{ {'b': 1, 'a': '<é>'} | tojson(indent=2, sort_keys=True) }}|"
        "{{ [1, 2] | tojson(separators=(',', ':')) }}|{{ strftime_now('%Y') | length }}|"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}|"
        "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}|"
        "{{ dict(a=1) }}")
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    out = template.render(messages, tools=[{"name": "ü & <x>"}])
    assert out == '{"name": "ü & <x>"}|{\n  "a": "<é>",\n  "b": 1\n}|[1,2]|4|user|3|{\'a\': 1}'


def test_raise_exception_surfaces_the_message():
    template = ChatTemplate(
        "{% if messages[0].role != 'user' %}{{ raise_exception('First must be user!') }}{% endif %}")
    with pytest.raises(TokenizerError, match="First must be user!"):
        template.render([{"role": "system", "content": "x"}])


@pytest.mark.parametrize("messages,match", [
    ("hello", "list"),
    ([], "empty"),
    (["hi"], "message 0 must be a dict"),
    ([{"content": "x"}], "message 0 needs a string 'role'"),
    ([{"role": "user", "content": "x"}, {"role": "user", "content": 5}], "message 1 has a 'content'"),
])
def test_malformed_messages(messages, match):
    with pytest.raises(TokenizerError, match=match):
        ChatTemplate("x").render(messages)


def test_malformed_tools_and_template():
    with pytest.raises(TokenizerError, match="Tools"):
        ChatTemplate("x").render([{"role": "user", "content": ""}], tools=["get_weather"])
    with pytest.raises(TokenizerError, match="not valid Jinja"):
        ChatTemplate("{% for %}")


HOSTILE = {
    "mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals": "{{ cycler.__init__.__globals__ }}",
    "helper_globals": "{{ raise_exception.__globals__['os'] }}",
    "item_dunder": "{{ messages['__class__']['__base__'] }}",
    "mutate_input": "{{ messages.append(1) }}{{ messages | length }}",
    "namespace_private": "{% set ns = namespace() %}{% set ns._x = 1 %}",
    "import": "{% import 'os' as os %}",
    "include": "{% include '/etc/passwd' %}",
    "huge_range": "{% for x in range(10**9) %}{% endfor %}",
    "nested_loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "repeat": "{{ 'a' * 10**10 }}",
    "power": "{{ 2 ** 999999999 }}",
    "ljust": "{{ 'a'.ljust(10**10) }}",
    "center_filter": "{{ 'a' | center(10000000000) }}",
    "format_width": "{{ '%999999999s' % 'a' }}",
    "format_method": "{{ '{:>999999999}'.format('a') }}",
    "doubling": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "type_error": "{{ messages + 1 }}",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_templates_are_stopped(name):
    start = time.monotonic()
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(TokenizerError):
        ChatTemplate(HOSTILE[name]).render(messages)
    assert messages == [{"role": "user", "content": "hi"}]
    assert time.monotonic() - start < 2.0


def test_the_template_sees_copies_not_the_callers_objects():
    class Sneaky(str):
        def run(self):
            return "ran"

    messages = [{"role": "user", "content": Sneaky("x"), "extra": object()}]
    assert ChatTemplate("{{ messages[0].content.run }}|{{ messages[0].extra }}").render(messages) == "|<object>"
