"""Every error status, each with OpenAI's error shape; bad input never gives a 500."""

from __future__ import annotations

import json

import openai
import pytest

from ember_test_server import httpx
from ember_test_server import MAX_BODY_BYTES, MAX_MODEL_LEN, scripted_llm, serve

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def post(server, path, body, headers=None, **kwargs):
    headers = server.headers() if headers is None else headers
    if isinstance(body, (dict, list)):
        return httpx.post(server.url + path, json=body, headers=headers, timeout=30, **kwargs)
    return httpx.post(server.url + path, content=body, headers={**headers, "Content-Type": "application/json"},
                      timeout=30, **kwargs)


def assert_error(resp, status, param=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    return err


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {**CHAT, "max_tokens": -1}, "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 0}, "max_completion_tokens"),
    ("/v1/chat/completions", {**CHAT, "temperature": -0.5}, "temperature"),
    ("/v1/chat/completions", {**CHAT, "top_p": 0}, "top_p"),
    ("/v1/chat/completions", {**CHAT, "top_p": 1.5}, "top_p"),
    ("/v1/chat/completions", {**CHAT, "n": 0}, "n"),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 99}, "top_logprobs"),
    ("/v1/chat/completions", {**CHAT, "presence_penalty": 3}, "presence_penalty"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": MAX_MODEL_LEN}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [], "max_tokens": 2}, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, None),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, None),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {**CHAT, "stop": 5}, None),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function"}]}, None),
    ("/v1/chat/completions", [1, 2], None),
    ("/v1/chat/completions", b'{"messages": [', None),
    ("/v1/chat/completions", b"", None),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -5}, "max_tokens"),
    ("/v1/completions", {"prompt": [], "max_tokens": 2}, None),
    ("/v1/completions", {"prompt": [[]], "max_tokens": 2}, None),
    ("/v1/completions", {"prompt": [10**9], "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"prompt": [-1], "max_tokens": 2}, None),
    ("/v1/completions", {"prompt": [5] * MAX_MODEL_LEN, "max_tokens": 1}, None),
    ("/v1/completions", {"prompt": "hi", "max_tokens": MAX_MODEL_LEN}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10**30}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "echo": True}, None),
    ("/v1/completions", b'{"prompt": "hi", "temperature": NaN}', None),
])
def test_bad_requests_are_400(server, path, body, param):
    assert_error(post(server, path, body), 400, param)


def test_context_errors_say_so(server, ):
    err = assert_error(post(server, "/v1/completions", {"prompt": "hi", "max_tokens": MAX_MODEL_LEN}), 400)
    assert err["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0).completions.create(
            model=server.model, prompt="hi", max_tokens=MAX_MODEL_LEN)


def test_api_key(server):
    assert_error(post(server, "/v1/chat/completions", CHAT, headers={}), 401)
    assert_error(post(server, "/v1/chat/completions", CHAT, headers={"Authorization": "Bearer nope"}), 401)
    assert_error(httpx.get(server.url + "/v1/models"), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server.url + "/health").status_code == 200  # probes need no key
    assert post(server, "/v1/chat/completions", CHAT).status_code == 200


def test_unknown_model_and_path(server):
    err = assert_error(post(server, "/v1/chat/completions", {**CHAT, "model": "gpt-9"}), 404, "model")
    assert err["code"] == "model_not_found"
    assert_error(httpx.get(server.url + "/v1/models/gpt-9", headers=server.headers()), 404)
    assert_error(httpx.get(server.url + "/nope"), 404)
    assert_error(httpx.get(server.url + "/v1/chat/completions", headers=server.headers()), 405)


def test_body_too_large(server):
    big = {"prompt": "x" * (MAX_BODY_BYTES + 1), "max_tokens": 1}
    assert_error(post(server, "/v1/completions", big), 413)

    def chunked():  # no Content-Length: the limit holds while reading
        data = json.dumps(big).encode()
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]
    assert_error(post(server, "/v1/completions", chunked()), 413)


def test_unexpected_exception_is_a_500_and_the_server_goes_on(server, monkeypatch):
    import ember.server.serving_completion as serving

    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(serving, "_prompt_ids", broken)
    err = assert_error(post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 2}), 500)
    assert "boom" not in err["message"]  # no internals leak
    monkeypatch.undo()
    assert post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 2}).status_code == 200


@pytest.fixture(scope="module")
def full_server(tiny_checkpoint):
    """One running slot, no queue; a scripted engine that is slow enough to keep the slot taken."""
    llm = scripted_llm(tiny_checkpoint, max_num_seqs=1)
    llm.engine.script, llm.engine.step_delay = [100] * 200, 0.02
    yield from serve(llm, max_num_seqs=1, max_queue=0)


def test_queue_full_is_503(full_server):
    body = {"model": full_server.model, "prompt": "Go on.", "max_tokens": 200, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", full_server.url + "/v1/completions", json=body, headers=full_server.headers()) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # (kept: dropping the iterator closes the connection)
            next(lines)  # it is admitted and running; the one slot is taken
            err = assert_error(post(full_server, "/v1/completions", {"prompt": "hi", "max_tokens": 2}), 503)
            assert err["code"] == "queue_full"
    # Once the slot is free again, requests are served.
    for _ in range(100):
        resp = post(full_server, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
        if resp.status_code != 503:
            break
    assert resp.status_code == 200
