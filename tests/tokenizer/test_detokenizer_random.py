"""Streamed text against one full decode on random token sequences, with the real Qwen3 tokenizer:
random ids from the whole vocabulary (and past it), lone bytes, specials, CJK and emoji text."""

import random

import pytest

from ember.tokenizer import IncrementalDetokenizer
from ember.tokenizer.byte_pieces import byte_pieces

from test_detokenizer import TEXTS, WindowOnly, byte_token_ids

PADDED_VOCAB = 151936  # the model's embedding rows: ids past the tokenizer's decode to nothing


def random_ids(tok, rng):
    """One of several kinds of random output, 1-120 tokens."""
    n = rng.randrange(1, 120)
    kind = rng.randrange(4)
    if kind == 0:  # anything the model could sample
        return [rng.randrange(PADDED_VOCAB) for _ in range(n)]
    if kind == 1:  # lone bytes: characters split across tokens, and broken UTF-8
        byte_ids = list(byte_token_ids(tok).values())
        return [rng.choice(byte_ids) for _ in range(n)]
    text_ids = tok.encode(rng.choice(TEXTS[1:4]) * 4)  # CJK, kana and hangul, emoji
    start = rng.randrange(len(text_ids))
    ids = text_ids[start : start + n]
    if kind == 3:  # with specials, added tokens, bytes and random ids mixed in
        extra = [*range(151643, 151669), *byte_token_ids(tok).values()]
        for _ in range(rng.randrange(1, 6)):
            ids.insert(rng.randrange(len(ids) + 1), rng.choice([rng.choice(extra), rng.randrange(PADDED_VOCAB)]))
    return ids


def stream(tok, ids, prompt, **kwargs):
    detok = IncrementalDetokenizer(tok, prompt, **kwargs)
    emitted = [detok.add(i) for i in ids]
    return detok, "".join(emitted) + detok.flush(), emitted


@pytest.mark.parametrize("path", ["bytes", "window"])
def test_random_streams_equal_full_decode(tok, path):
    detok_tok = tok if path == "bytes" else WindowOnly(tok)
    rng = random.Random(0)
    for _ in range(300 if path == "bytes" else 100):
        ids, prompt = random_ids(tok, rng), random_ids(tok, rng)[:8]
        skip = rng.random() < 0.5
        full = tok.decode(ids, skip_special_tokens=skip)
        detok, text, emitted = stream(detok_tok, ids, prompt, skip_special_tokens=skip)
        assert text == detok.text == full, ids
        shown = ""
        for piece in emitted:  # nothing shown is ever taken back
            shown += piece
            assert full.startswith(shown)
        # All at once (LLM.generate), and in two halves, give the same text.
        cut = rng.randrange(len(ids) + 1)
        detok = IncrementalDetokenizer(detok_tok, prompt, skip_special_tokens=skip)
        assert "".join(detok.add(i) for i in ids[:cut]) + detok.add_final(ids[cut:]) == full


def expected_with_stops(full, stops, include):
    """The stop string that completes first in the full text (ties: the one starting first)."""
    found = [(full.find(s) + len(s), full.find(s), s) for s in stops if s in full]
    if not found:
        return full, None
    end, start, stop = min(found)
    return full[: end if include else start], stop


def test_random_streams_with_stop_strings(tok):
    rng = random.Random(1)
    for _ in range(300):
        ids = random_ids(tok, rng)
        full = tok.decode(ids, skip_special_tokens=True)
        stops = []
        for _ in range(rng.randrange(1, 4)):  # mostly pieces of the text, so that they match
            if full and rng.random() < 0.8:
                start = rng.randrange(len(full))
                stops.append(full[start : start + rng.randrange(1, 6)])
            else:
                stops.append(rng.choice(["\n\n", "STOP", "。", "😀", "\ufffd"]))
        include = rng.random() < 0.5
        want, reason = expected_with_stops(full, stops, include)
        detok, text, _ = stream(tok, ids, [], stop=stops, include_stop_str_in_output=include)
        assert (text, detok.stop_reason) == (want, reason), (ids, stops)


@pytest.mark.parametrize("skip", [False, True])
def test_byte_table_agrees_with_decode_on_every_id(tok, skip):
    pieces = tok.byte_pieces(skip)
    texts = tok._backend.decode_batch([[i] for i in range(len(pieces))], skip_special_tokens=skip)
    assert len(pieces) == tok.vocab_size
    assert all(p.decode("utf-8", errors="replace") == t for p, t in zip(pieces, texts))
    assert all(pieces[i] == b"" for i in tok.special_token_ids) == skip


def test_byte_path_calls_no_decode_per_token(tok):
    class NoDecode(WindowOnly):
        def byte_pieces(self, skip_special_tokens=False):
            return tok.byte_pieces(skip_special_tokens)

        def decode(self, ids, skip_special_tokens=False):
            raise AssertionError("decode called")

    ids = tok.encode(" ".join(TEXTS))
    detok, text, _ = stream(NoDecode(tok), ids, ids[:5], stop=["never"])
    assert text == tok.decode(ids, skip_special_tokens=True)


def test_other_decoders_take_the_window_path(tok):
    import tokenizers

    backend = tokenizers.Tokenizer.from_str(tok._backend.to_str())
    backend.decoder = tokenizers.decoders.Metaspace()
    assert byte_pieces(backend) is None
    assert byte_pieces(tok._backend) is not None
