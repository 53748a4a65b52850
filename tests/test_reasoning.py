import pytest

from ember.reasoning import ThinkingSplitter

TEXT = "<think>\nLet me think.\n</think>\n\nThe answer is 4."


def run(pieces, **kw):
    s = ThinkingSplitter(**kw)
    out = [x for p in pieces for x in s.feed(p)] + s.flush()
    joined = {"thinking": "", "answer": ""}
    for kind, text in out:
        joined[kind] += text
    return joined


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_split_any_chunking(size):
    pieces = [TEXT[i : i + size] for i in range(0, len(TEXT), size)]
    assert run(pieces) == {"thinking": "Let me think.\n", "answer": "The answer is 4."}


def test_no_thinking_is_all_answer():
    assert run(["Hello ", "<thi", "nk> world"]) == {"thinking": "", "answer": "Hello <think> world"}


def test_unfinished_thinking_stays_thinking():
    assert run(["<think>still going"]) == {"thinking": "still going", "answer": ""}


def test_prompt_opened_thinking():
    assert run(["reasoning</think>answer"], starts_in_thinking=True) == {"thinking": "reasoning", "answer": "answer"}
