"""Qwen3 tool calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` in the answer text
become OpenAI ``tool_calls``, incrementally.

``<tool_call>`` and ``</tool_call>`` are added tokens that are *not* special in Qwen3's
tokenizer_config.json, so they survive ``skip_special_tokens=True`` and show up in the text.
A call that does not parse (bad JSON, no name) falls back to plain content, never an error.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from ember.reasoning import _partial_suffix

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


@dataclass
class ParsedToolCall:
    name: str
    arguments: str  # a JSON string, as OpenAI returns it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def parse_tool_call(body: str) -> ParsedToolCall | None:
    """The call in the text between the tags, or None if it is not a well-formed call."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments already as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


Piece = tuple[str, "str | ParsedToolCall"]  # ("content", text) or ("tool_call", call)


class Qwen3ToolParser:
    """Feed answer-text deltas; get back content pieces and complete tool calls in order.

    Text that could be the start of ``<tool_call>`` is held until it is decided. Whitespace
    around tool calls (Qwen puts newlines between them) belongs to no one: trailing whitespace of
    content is held until more content follows, and dropped before a call.
    """

    def __init__(self) -> None:
        self.in_call = False
        self.pending = ""
        self.held_space = ""
        self.num_calls = 0
        self.after_call = False

    def feed(self, text: str) -> list[Piece]:
        self.pending += text
        out: list[Piece] = []
        while self.pending:
            if not self.in_call:
                idx = self.pending.find(TOOL_OPEN)
                if idx >= 0:
                    self._content(self.pending[:idx], out)
                    self.pending, self.in_call = self.pending[idx + len(TOOL_OPEN):], True
                    continue
                keep = _partial_suffix(self.pending, TOOL_OPEN)
                self._content(self.pending[: len(self.pending) - keep], out)
                self.pending = self.pending[len(self.pending) - keep:]
                break
            idx = self.pending.find(TOOL_CLOSE)
            if idx < 0:
                break
            self._call(self.pending[:idx], out, closed=True)
            self.pending, self.in_call = self.pending[idx + len(TOOL_CLOSE):], False
        return out

    def flush(self) -> list[Piece]:
        out: list[Piece] = []
        if self.in_call:  # the output ended inside a call: take it if it is complete JSON
            self._call(self.pending, out, closed=False)
        else:
            self._content(self.pending, out)
        self.pending, self.in_call = "", False
        if self.held_space and not self.num_calls:
            out.append(("content", self.held_space))
        self.held_space = ""
        return out

    def _call(self, body: str, out: list[Piece], closed: bool) -> None:
        call = parse_tool_call(body)
        if call is None:
            raw = TOOL_OPEN + body + (TOOL_CLOSE if closed else "")
            self._content(raw, out)
            return
        self.num_calls += 1
        self.held_space, self.after_call = "", True  # whitespace before and after a call is dropped
        out.append(("tool_call", call))

    def _content(self, text: str, out: list[Piece]) -> None:
        if self.after_call:  # whitespace right after a call belongs to no one
            text = text.lstrip()
            if not text:
                return
            self.after_call = False
        text = self.held_space + text
        body = text.rstrip()
        self.held_space = text[len(body):]
        if body:
            out.append(("content", body))
