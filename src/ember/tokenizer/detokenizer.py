"""Turn generated token ids into text as they arrive, with stop strings.

Byte-level BPE tokens can end in the middle of a UTF-8 character, and a stop string can straddle
several tokens, so not every token yields text at once. Everything emitted always joins up to one
full ``decode`` of the output. Two ways of getting there:

- ``ByteStream``, the fast path (byte-level tokenizers such as Qwen3's): decode is the lossy UTF-8
  decode of the tokens' bytes joined, so an incremental UTF-8 decoder fed each token's bytes (a
  table look-up) gives the same text. No tokenizer call per token: the engine thread serves many
  streams and this is its per-token host cost.
- ``WindowStream``, for any other tokenizer: vLLM's prefix/read offsets. Each step decodes a short
  window of ids (from ``prefix`` on) and emits what it adds beyond the already-emitted part
  (``prefix:read``), once the window no longer ends in an unfinished character (U+FFFD).
"""

import codecs
from collections.abc import Sequence

from ember.errors import InvalidRequestError

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens decoded as context before the output, so the first output token decodes as it
# would after the prompt (some decoders drop a leading space at the start of a text).
PROMPT_CONTEXT = 5
# Tokens that may wait for a character to finish before we look for an earlier safe split: a
# character is at most 4 bytes, so only a run of real U+FFFD or garbage bytes gets this far.
MAX_PENDING = 8
# Drop ids before the window once this many have piled up.
TRIM_AT = 256


class IncrementalDetokenizer:
    """Text of one sequence's output, token by token; ``text`` is everything emitted so far."""

    def __init__(
        self,
        tokenizer,
        prompt_ids: Sequence[int],
        skip_special_tokens: bool = True,
        stop: Sequence[str] | None = (),
        include_stop_str_in_output: bool = False,
    ) -> None:
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        if any(not isinstance(s, str) or not s for s in stop):
            raise InvalidRequestError("Stop strings must be non-empty strings.")
        self._stop = tuple(dict.fromkeys(stop))
        self._include_stop = include_stop_str_in_output
        # Starts of stop strings, longest first, and the characters such a start can end with:
        # most text ends in none of them, and then holding nothing back costs one set look-up.
        longest = max((len(s) for s in self._stop), default=0)
        self._stop_heads = [(n, tuple({s[:n] for s in self._stop if len(s) > n})) for n in range(longest - 1, 0, -1)]
        self._head_ends = frozenset(s[n - 1] for s in self._stop for n in range(1, len(s)))

        table = tokenizer.byte_pieces(skip_special_tokens) if hasattr(tokenizer, "byte_pieces") else None
        if table is not None:
            self._stream = ByteStream(table)  # no prompt context: byte-level decoding has none
        else:
            self._stream = WindowStream(tokenizer, prompt_ids, skip_special_tokens)
        self._held = ""  # decoded text held back as the possible start of a stop string
        self._pieces: list[str] = []
        self.stopped = False
        self.stop_reason: str | None = None

    @property
    def text(self) -> str:
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    @property
    def has_stop_strings(self) -> bool:
        return bool(self._stop)

    def add(self, token_id: int) -> str:
        """The text that ``token_id`` makes safe to show (often "", sometimes several characters)."""
        if self.stopped:
            return ""
        return self._release(self._stream.add(token_id), final=False)

    def add_final(self, token_ids: Sequence[int]) -> str:
        """All of a finished output's (remaining) ids at once, then ``flush``: one decode
        instead of one per token, for callers that only want the final text."""
        if self.stopped:
            return ""
        return self._release(self._stream.finish(token_ids), final=True)

    def flush(self) -> str:
        """At the end of generation: everything still held back (unfinished characters as U+FFFD)."""
        if self.stopped:
            return ""
        return self._release(self._stream.finish(()), final=True)

    # --- stop strings -------------------------------------------------------------------------

    def _release(self, new: str, final: bool) -> str:
        """Append ``new`` to the held text; stop at a stop string, or emit all but a possible start of one."""
        if not self._stop:
            out = new
        else:
            pending = self._held + new
            match = self._find_stop(pending)
            if match is not None:
                start, stop = match
                out = pending[: start + len(stop) if self._include_stop else start]
                self._held = ""
                self.stopped, self.stop_reason = True, stop
            else:
                keep = 0 if final else self._partial_stop_len(pending)
                out, self._held = pending[: len(pending) - keep], pending[len(pending) - keep:]
        if out:
            self._pieces.append(out)
        return out

    def _find_stop(self, text: str) -> tuple[int, str] | None:
        """The stop string that completes first in ``text`` (ties: the one starting first)."""
        best = None
        for stop in self._stop:
            start = text.find(stop)
            if start >= 0 and (best is None or (start + len(stop), start) < best[0]):
                best = ((start + len(stop), start), start, stop)
        return None if best is None else (best[1], best[2])

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest end of ``text`` that some stop string starts with."""
        if not text or text[-1] not in self._head_ends:
            return 0
        for n, heads in self._stop_heads:
            if text.endswith(heads):
                return n
        return 0


class ByteStream:
    """Ids to text through a table of each id's bytes (``Tokenizer.byte_pieces``) and an incremental
    UTF-8 decoder. It holds back only the bytes of an unfinished character, and replaces broken
    bytes by U+FFFD exactly as the tokenizer does (each maximal invalid subsequence by one)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        pieces = self._pieces
        return self._utf8.decode(pieces[token_id] if token_id < len(pieces) else b"")  # past the vocab: nothing

    def finish(self, token_ids: Sequence[int]) -> str:
        """The text of ``token_ids`` and of anything held back, as the end of the output."""
        pieces, size = self._pieces, len(self._pieces)
        return self._utf8.decode(b"".join(pieces[i] for i in token_ids if i < size), final=True)


class WindowStream:
    """Ids to text through ``tokenizer.decode`` of a short window of ids, for any tokenizer."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int], skip_special_tokens: bool) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        context = list(prompt_ids[-PROMPT_CONTEXT:])
        context_text = self._decode(context)
        if context_text.endswith(REPLACEMENT_CHAR):
            # The prompt ends inside a character: the output must not complete it, or it would
            # differ from decoding the output alone. Start clean instead.
            context, context_text = [], ""
        self._ids = context
        self._prefix = 0  # window start: ids before it are never decoded again
        self._read = len(context)  # ids before it have been emitted
        self._prefix_text = context_text  # decode(ids[prefix:read])

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._decode(self._ids[self._prefix:])
        if len(text) <= len(self._prefix_text) or not text.startswith(self._prefix_text):
            return ""  # nothing new yet (a skipped special token, or a decoder still settling)
        if not text.endswith(REPLACEMENT_CHAR):
            return self._advance(text, len(self._ids))
        if len(self._ids) - self._read > MAX_PENDING:
            return self._advance_to_safe_split(text)
        return ""

    def finish(self, token_ids: Sequence[int]) -> str:
        self._ids.extend(token_ids)
        text = self._decode(self._ids[self._prefix:])
        return self._advance(text, len(self._ids)) if text.startswith(self._prefix_text) else ""

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def _advance(self, text: str, upto: int) -> str:
        """Emit ``text`` (the decode of ids[prefix:upto]) beyond the part already emitted."""
        new = text[len(self._prefix_text):]
        self._prefix, self._read = self._read, upto
        self._prefix_text = self._decode(self._ids[self._prefix:self._read])
        if self._prefix > TRIM_AT:
            del self._ids[:self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return new

    def _advance_to_safe_split(self, text: str) -> str:
        """Emit up to the latest id boundary where the text splits cleanly, so a long run of
        U+FFFD does not grow the window (and the cost per token) without bound.

        A boundary is clean when decoding both sides apart gives the same text as decoding them
        together: then no character straddles it, and later ids cannot change the part before it.
        """
        for k in range(len(self._ids) - 1, self._read, -1):
            head = self._decode(self._ids[self._prefix:k])
            tail = self._decode(self._ids[k:])
            if tail and head + tail == text and head.startswith(self._prefix_text):
                return self._advance(head, k)
        return ""
