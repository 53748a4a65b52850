"""Streaming detokenization: what add() and flush() emit always joins up to one full decode, never
shows half a character, and stops exactly at stop strings, wherever the token boundaries fall.
Every test runs on both paths: the byte table (Qwen3's byte-level tokenizer) and decode windows."""

import random

import pytest

from ember.errors import InvalidRequestError
from ember.tokenizer import IncrementalDetokenizer
from ember.tokenizer import detokenizer as detokenizer_module


class WindowOnly:
    """The real tokenizer without its byte table: the detokenizer's general, decode-window path."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def byte_pieces(self, skip_special_tokens=False):
        return None


@pytest.fixture(scope="module", params=["bytes", "window"])
def tok(request, tok):
    return tok if request.param == "bytes" else WindowOnly(tok)


TEXTS = [
    "Hello, world! How are you today?",
    "你好，世界！机器学习和自然语言处理。",
    "こんにちは、カタカナ。안녕하세요 세계.",
    "emoji 😀😃 👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 rainbow 🏳️‍🌈",
    "Привет мир · Γειά σου · مرحبا · שלום · नमस्ते · สวัสดี",
    "def f(x):\n\treturn {'a': [1, 2]}  # done\r\n\r\n",
    "   spaces   and\n\n\nnewlines   ",
    "<think>\nhmm\n</think>\n\n<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
    "Hi<|im_end|><|endoftext|>",
    "real replacement chars \ufffd\ufffd in text \ufffd",
]


def byte_token_ids(tok):
    """Id of the single-byte token for each byte value (GPT-2's byte-to-unicode table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {b: tok.token_to_id(c) for b, c in chars.items()}


def stream(tok, ids, prompt=(), **kwargs):
    detok = IncrementalDetokenizer(tok, list(prompt), **kwargs)
    return detok, [detok.add(i) for i in ids]


def check_invariant(tok, ids, prompt=(), skip=True):
    """For every prefix: the adds plus flush equal one full decode, and what add() emitted is
    already final (a prefix of the full decode of everything)."""
    full = tok.decode(ids, skip_special_tokens=skip)
    detok, outs = stream(tok, ids, prompt, skip_special_tokens=skip)
    emitted = ""
    for out in outs:
        emitted += out
        assert full.startswith(emitted)
    assert emitted + detok.flush() == full == detok.text
    for n in range(len(ids)):
        detok, outs = stream(tok, ids[:n], prompt, skip_special_tokens=skip)
        assert "".join(outs) + detok.flush() == tok.decode(ids[:n], skip_special_tokens=skip)


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_full_decode(tok, text, skip):
    prompt = tok.encode_chat([{"role": "user", "content": "Write something."}])
    check_invariant(tok, tok.encode(text), prompt, skip)


def test_characters_split_into_single_bytes(tok):
    byte_ids = byte_token_ids(tok)
    text = "a😀世b👨‍👩‍👧é"
    ids = [byte_ids[b] for b in text.encode("utf-8")]
    detok, outs = stream(tok, ids)
    assert [o for o in outs if o] == ["a", "😀", "世", "b", "👨", "\u200d", "👩", "\u200d", "👧", "é"]
    assert detok.flush() == "" and detok.text == text
    check_invariant(tok, ids)


def test_random_ids_with_broken_bytes(tok):
    # Garbage and lone bytes, real U+FFFD, specials: still exactly one full decode, and the prompt
    # may itself end in the middle of a character.
    byte_ids = list(byte_token_ids(tok).values())
    rng = random.Random(1)
    pool = byte_ids + [5691, 9973, 99244, 97120, 145233, 378, 235] + list(range(151643, 151669))
    for _ in range(60):
        ids = [rng.choice(pool) for _ in range(rng.randrange(1, 30))]
        prompt = [rng.choice(pool) for _ in range(rng.randrange(0, 8))]
        skip = rng.random() < 0.5
        detok, outs = stream(tok, ids, prompt, skip_special_tokens=skip)
        assert "".join(outs) + detok.flush() == tok.decode(ids, skip_special_tokens=skip)


def test_a_run_of_replacement_chars_keeps_the_window_short(tok):
    ids = tok.encode("x") + [5691] * 300 + tok.encode(" done")
    detok = IncrementalDetokenizer(WindowOnly(tok), [])
    widths = []
    for i in ids:
        detok.add(i)
        widths.append(len(detok._stream._ids) - detok._stream._prefix)
    assert max(widths) <= 2 * detokenizer_module.MAX_PENDING + 2
    assert detok.text + detok.flush() == tok.decode(ids)


def test_cost_per_token_is_constant(tok):
    class Counting:
        def __init__(self):
            self.decoded = 0

        def decode(self, ids, skip_special_tokens=False):
            self.decoded += len(ids)
            return tok.decode(ids, skip_special_tokens)

    counting = Counting()
    ids = tok.encode(" ".join(TEXTS) * 20)
    detok, outs = stream(counting, ids, prompt=list(range(1000, 3000)))
    assert len(ids) > 2000 and counting.decoded < 12 * len(ids)


def ids_of(tok, pieces):
    """Token ids with a token boundary at least between every two pieces."""
    return [i for piece in pieces for i in tok.encode(piece)]


def test_stop_string_straddling_tokens(tok):
    ids = ids_of(tok, ["Hello", " wor", "ld", " E", "N", "D", " more", " text"])
    detok, outs = stream(tok, ids, stop=["END"])
    assert "".join(outs) == detok.text == "Hello world "
    assert detok.stopped and detok.stop_reason == "END"
    assert outs[-1] == outs[-2] == "" and detok.add(ids[0]) == "" and detok.flush() == ""


def test_stop_string_at_the_very_start(tok):
    detok, outs = stream(tok, ids_of(tok, ["Hel", "lo", " there"]), stop=["Hel"])
    assert outs == ["", "", ""] and detok.text == "" and detok.stop_reason == "Hel"


def test_overlapping_partial_matches(tok):
    ids = ids_of(tok, ["a", "b", "a", "b", "c", "d"])
    detok, outs = stream(tok, ids, stop=["abc"])
    assert outs[:5] == ["", "", "ab", "", ""] and detok.text == "ab" and detok.stopped
    detok, outs = stream(tok, ids, stop=["abc"], include_stop_str_in_output=True)
    assert "".join(outs) == detok.text == "ababc"


def test_several_stop_strings_first_to_complete_wins(tok):
    ids = ids_of(tok, ["The", " answer", " is", " 4", ".\n\n", "STOP", " later"])
    detok, _ = stream(tok, ids, stop=["STOP", "\n\n", "answer is 5"])
    assert detok.text == "The answer is 4." and detok.stop_reason == "\n\n"
    # Completing at the same character: the longer (earlier-starting) one wins.
    detok, _ = stream(tok, ids_of(tok, ["xx", "abc", "y"]), stop=["bc", "abc"])
    assert detok.text == "xx" and detok.stop_reason == "abc"


def test_stop_inside_one_token_with_text_after_it(tok):
    detok, outs = stream(tok, tok.encode("foo.\n\nbar"), stop=["\n\n"], include_stop_str_in_output=True)
    assert detok.text == "foo.\n\n" and detok.stop_reason == "\n\n"


def test_stop_string_made_of_split_characters(tok):
    byte_ids = byte_token_ids(tok)
    ids = ids_of(tok, ["你好"]) + [byte_ids[b] for b in "世界!".encode("utf-8")]
    detok, outs = stream(tok, ids, stop=["世界"])
    assert detok.text == "你好" and detok.stopped


def test_held_back_text_is_released_by_flush(tok):
    detok, outs = stream(tok, ids_of(tok, ["the", " E", "N"]), stop=["END"])
    assert "".join(outs) == "the " and not detok.stopped
    assert detok.flush() == "EN" and detok.text == "the EN" and detok.stop_reason is None


def test_skip_special_tokens(tok):
    ids = tok.encode("Hi<|im_end|>")
    assert stream(tok, ids)[0].text == "Hi"
    detok, _ = stream(tok, ids, skip_special_tokens=False)
    assert detok.text + detok.flush() == "Hi<|im_end|>"
    detok, _ = stream(tok, ids, skip_special_tokens=False, stop=["<|im_end|>"])
    assert detok.text == "Hi" and detok.stop_reason == "<|im_end|>"


def test_empty_stop_string_is_refused(tok):
    with pytest.raises(InvalidRequestError):
        IncrementalDetokenizer(tok, [], stop=["ok", ""])
