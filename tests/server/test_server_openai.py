"""The OpenAI endpoints through the official ``openai`` client, against the tiny random model."""

from __future__ import annotations

import json
import math

import openai
import pytest


MESSAGES = [{"role": "user", "content": "Name three colors."}]
GREEDY = dict(temperature=0, max_tokens=6, extra_body={"ignore_eos": True})


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=60)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [server.model]
    assert client.models.retrieve(server.model).id == server.model


def test_chat_basic(server, client):
    resp = client.chat.completions.create(model=server.model, messages=MESSAGES, **GREEDY)
    choice = resp.choices[0]
    assert resp.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason == "length" and resp.usage.completion_tokens == 6
    prompt = server.llm.tokenizer.apply_chat_template(MESSAGES)
    assert resp.usage.prompt_tokens == len(server.llm.tokenizer.encode(prompt))
    again = client.chat.completions.create(model=server.model, messages=MESSAGES, **GREEDY)
    assert again.choices[0].message.content == choice.message.content


def test_chat_stream_shape_and_usage(server, client):
    whole = client.chat.completions.create(model=server.model, messages=MESSAGES, **GREEDY)
    chunks = list(client.chat.completions.create(model=server.model, messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert chunks[-2].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


def test_completions_prompt_forms_and_stream(server, client):
    ids = server.llm.tokenizer.encode("Once upon a time")
    base = dict(model=server.model, temperature=0, max_tokens=5, extra_body={"ignore_eos": True})
    by_text = client.completions.create(prompt="Once upon a time", **base)
    by_ids = client.completions.create(prompt=ids, **base)
    batch = client.completions.create(prompt=["Once upon a time", "Hello"], **base)
    batch_ids = client.completions.create(prompt=[ids, ids[:2]], **base)
    assert by_text.object == "text_completion"
    assert by_text.choices[0].text == by_ids.choices[0].text == batch.choices[0].text == batch_ids.choices[0].text
    assert [c.index for c in batch.choices] == [0, 1]
    assert by_text.usage.prompt_tokens == len(ids) and by_text.usage.completion_tokens == 5
    stream = list(client.completions.create(prompt="Once upon a time", stream=True, **base))
    assert "".join(c.choices[0].text for c in stream) == by_text.choices[0].text
    assert stream[-1].choices[0].finish_reason == "length"


def test_n_choices_differ_and_seeds_reproduce(server, client):
    args = dict(model=server.model, messages=MESSAGES, n=3, temperature=1.0, max_tokens=8, seed=7,
                extra_body={"ignore_eos": True})
    first = client.chat.completions.create(**args)
    second = client.chat.completions.create(**args)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in second.choices]  # same seed, same outputs
    assert len(set(texts)) > 1  # each choice gets its own seed (seed + index)
    other = client.chat.completions.create(**{**args, "seed": 8, "n": 1})
    assert other.choices[0].message.content != texts[0]
    streamed = list(client.chat.completions.create(**args, stream=True))
    for i in range(3):
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices[0].index == i) == texts[i]
    assert sum(1 for c in streamed if c.choices[0].finish_reason) == 3


def test_stop_strings(server, client):
    base = dict(model=server.model, prompt="Once upon a time", temperature=0, max_tokens=16,
                extra_body={"ignore_eos": True})
    text = client.completions.create(**base).choices[0].text
    stop = text[3:6]
    assert stop
    out = client.completions.create(**base, stop=[stop]).choices[0]
    assert out.finish_reason == "stop" and stop not in out.text and text.startswith(out.text)
    streamed = list(client.completions.create(**base, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == out.text


def test_logprobs_formats(server, client):
    chat = client.chat.completions.create(model=server.model, messages=MESSAGES, logprobs=True, top_logprobs=3,
                                          **GREEDY).choices[0]
    entries = chat.logprobs.content
    assert len(entries) == 6
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3 and bytes(e.bytes).decode(errors="replace") == e.token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob)  # greedy takes the most likely
        assert sum(math.exp(t.logprob) for t in e.top_logprobs) <= 1 + 1e-5
    comp = client.completions.create(model=server.model, prompt="Hi", logprobs=2, temperature=0, max_tokens=4,
                                     extra_body={"ignore_eos": True}).choices[0]
    lp = comp.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert lp.text_offset[0] == 0 and all(len(t) == 2 for t in lp.top_logprobs)
    stream = list(client.chat.completions.create(model=server.model, messages=MESSAGES, logprobs=True,
                                                 stream=True, **GREEDY))
    streamed = [e.token for c in stream if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert streamed == [e.token for e in entries]


def test_thinking_on_and_off_prompts(server, client):
    on = client.chat.completions.create(model=server.model, messages=MESSAGES, **GREEDY)
    off = client.chat.completions.create(model=server.model, messages=MESSAGES,
                                         **{**GREEDY, "extra_body": {"ignore_eos": True,
                                                                     "chat_template_kwargs": {"enable_thinking": False}}})
    tok = server.llm.tokenizer
    off_prompt = tok.apply_chat_template(MESSAGES, enable_thinking=False)
    assert off.usage.prompt_tokens == len(tok.encode(off_prompt)) > on.usage.prompt_tokens  # the empty think block
    assert off.choices[0].message.content  # the random model writes no <think>: it is all content


def test_tools_reach_the_template_unless_tool_choice_none(server, client):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    plain = client.chat.completions.create(model=server.model, messages=MESSAGES, **GREEDY)
    with_tools = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=tools, **GREEDY)
    hidden = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=tools, tool_choice="none",
                                            **GREEDY)
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens == hidden.usage.prompt_tokens
    # A conversation that already holds a tool call and its result renders too.
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
    ]
    assert client.chat.completions.create(model=server.model, messages=history, tools=tools, **GREEDY).choices


def test_generation_config_defaults_apply(server, client):
    # Unset sampling parameters come from generation_config.json (via LLM.default_sampling_params):
    # with the same seed, leaving them out samples exactly as spelling them out does.
    g = server.llm.engine.generation_defaults
    assert g.temperature and g.top_p and g.top_k  # the test tokenizer folder has a sampling config
    base = dict(model=server.model, prompt="The weather", max_tokens=8, seed=3, extra_body={"ignore_eos": True})
    implicit = client.completions.create(**base).choices[0].text
    explicit = client.completions.create(**{**base, "temperature": g.temperature, "top_p": g.top_p,
                                            "extra_body": {"ignore_eos": True, "top_k": g.top_k}}).choices[0].text
    greedy = client.completions.create(**{**base, "temperature": 0}).choices[0].text
    assert implicit == explicit != greedy
