"""The raw bytes of every token of a byte-level BPE tokenizer (Qwen3's), for streaming detokenization.

With a ByteLevel decoder, ``decode(ids)`` maps each token back to bytes, joins them, and decodes the
join as UTF-8 with U+FFFD for broken sequences. So the text of a stream is an incremental UTF-8
decode of the tokens' bytes, with no tokenizer call per token. This module builds the id -> bytes
table once and checks it against the tokenizer itself.
"""

from functools import lru_cache

import tokenizers

REPLACEMENT_CHAR = "\ufffd"


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE writes each byte as a printable character; this maps them back."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def piece_bytes(piece: str) -> bytes:
    """The bytes that the ByteLevel decoder gives one token string: its characters mapped back to
    bytes, or, if any character is not a byte character (an added token such as <think>), its UTF-8."""
    decoder = byte_decoder()
    if all(ch in decoder for ch in piece):
        return bytes(decoder[ch] for ch in piece)
    return piece.encode("utf-8")


def byte_pieces(backend: tokenizers.Tokenizer) -> list[bytes] | None:
    """Each id's bytes (b"" for ids without a token), such that ``backend.decode(ids)`` equals
    ``b"".join(pieces[i] for i in ids).decode("utf-8", "replace")`` with special tokens kept;
    None when the tokenizer does not decode that way (then callers fall back to ``decode``)."""
    if not isinstance(backend.decoder, tokenizers.decoders.ByteLevel):
        return None
    added = backend.get_added_tokens_decoder()
    size = max(backend.get_vocab_size(with_added_tokens=True), max(added, default=-1) + 1)
    # One batched decode of every token alone: most decode to valid UTF-8, and then the text is
    # exactly their bytes. The rest hold part of a character; rebuild those from the token string
    # and check that the tokenizer agrees, so the table never disagrees with decode on any id.
    texts = backend.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
    pieces = []
    for i, text in enumerate(texts):
        if REPLACEMENT_CHAR not in text:
            pieces.append(text.encode("utf-8"))
            continue
        raw = piece_bytes(backend.id_to_token(i) or "")
        if raw.decode("utf-8", errors="replace") != text:
            return None
        pieces.append(raw)
    return pieces
