"""Many clients at once, and clients that leave mid-stream."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from ember_test_server import httpx

NUM_CLIENTS = 32
MAX_TOKENS = 8


def _request(server, i: int) -> dict:
    return dict(model=server.model, messages=[{"role": "user", "content": f"Count to {i} in words, please."}],
                temperature=0, max_tokens=MAX_TOKENS + i % 4, logprobs=True, top_logprobs=2,
                extra_body={"ignore_eos": True})


async def _stream(client, args) -> list:
    entries = []
    async for chunk in await client.chat.completions.create(**args, stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            entries += chunk.choices[0].logprobs.content
    return entries


def _explain_difference(alone, together) -> str | None:
    """None if the outputs agree, or differ only after a numerical near-tie; else why they differ."""
    for pos, (a, b) in enumerate(zip(alone, together)):
        if a.token == b.token:
            continue
        # At the first divergence, was the choice a near-tie between the two best tokens?
        gap = abs(a.top_logprobs[0].logprob - a.top_logprobs[1].logprob)
        if gap < 1e-4 and {b.token} <= {t.token for t in a.top_logprobs}:
            return None
        return f"position {pos}: {a.token!r} alone vs {b.token!r} batched, top-2 gap {gap:.3g} (not a tie)"
    return None if len(alone) == len(together) else "lengths differ"


def test_concurrent_streams_match_running_alone(server):
    async def main():
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=120)
        alone = [await _stream(client, _request(server, i)) for i in range(NUM_CLIENTS)]
        together = await asyncio.gather(*(_stream(client, _request(server, i)) for i in range(NUM_CLIENTS)))
        await client.close()
        return alone, together

    alone, together = asyncio.run(main())
    assert [len(t) for t in together] == [MAX_TOKENS + i % 4 for i in range(NUM_CLIENTS)]
    problems = {i: why for i, (a, t) in enumerate(zip(alone, together)) if (why := _explain_difference(a, t))}
    assert not problems, problems


def _wait_for(predicate, timeout=20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_disconnect_mid_stream_frees_blocks(server, endpoint):
    max_tokens = 240  # far more than it can make before the client leaves
    assert _wait_for(lambda: server.metric("ember_kv_cache_usage_perc") == 0)
    before = server.metric("ember_generation_tokens_total")
    if endpoint == "chat":
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": "Go on forever."}]}
    else:
        path, body = "/v1/completions", {"prompt": "Go on forever."}
    body.update(model=server.model, stream=True, max_tokens=max_tokens, ignore_eos=True, temperature=0)
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", server.url + path, json=body, headers=server.headers()) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            assert server.metric("ember_kv_cache_usage_perc") > 0  # it is running and holds blocks
        # Leaving the block closes the connection mid-stream.
    assert _wait_for(lambda: server.metric("ember_kv_cache_usage_perc") == 0), "blocks were not freed"
    assert _wait_for(lambda: server.metric("ember_num_requests_running") == 0)
    generated = server.metric("ember_generation_tokens_total") - before
    assert generated < max_tokens, "the request ran to the end instead of being aborted"
    # The server still serves.
    ok = httpx.post(server.url + "/v1/completions", headers=server.headers(),
                    json={"model": server.model, "prompt": "hi", "max_tokens": 2})
    assert ok.status_code == 200
