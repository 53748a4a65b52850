"""A chat choice's generated text split into reasoning, content and tool calls, as it streams."""

from __future__ import annotations

from dataclasses import dataclass, field

from ember.reasoning import THINK_OPEN, ThinkingSplitter
from ember.server.tool_parser import ParsedToolCall, Qwen3ToolParser


@dataclass
class ChatDelta:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ParsedToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)

    def merge(self, other: "ChatDelta") -> None:
        self.reasoning += other.reasoning
        self.content += other.content
        self.tool_calls += other.tool_calls


def prompt_opens_thinking(prompt_text: str) -> bool:
    """True if the template already wrote ``<think>`` (and no ``</think>``) at the end of the prompt.

    Qwen3's own template writes nothing with thinking on (the model emits ``<think>``) and an
    empty ``<think>\\n\\n</think>`` with thinking off; other templates open the block themselves.
    """
    return prompt_text.rstrip().endswith(THINK_OPEN)


class ChatOutputParser:
    """Feed text deltas of one choice; get what to show as reasoning_content, content and tool_calls."""

    def __init__(self, starts_in_thinking: bool, parse_tools: bool):
        self.splitter = ThinkingSplitter(starts_in_thinking=starts_in_thinking)
        self.tools = Qwen3ToolParser() if parse_tools else None
        self.total = ChatDelta()

    def feed(self, text: str) -> ChatDelta:
        return self._route(self.splitter.feed(text) if text else [], final=False)

    def flush(self) -> ChatDelta:
        return self._route(self.splitter.flush(), final=True)

    @property
    def num_tool_calls(self) -> int:
        return len(self.total.tool_calls)

    def _route(self, pieces: list[tuple[str, str]], final: bool) -> ChatDelta:
        delta = ChatDelta()
        for kind, text in pieces:
            if kind == "thinking":
                delta.reasoning += text
            elif self.tools is None:
                delta.content += text
            else:
                self._add_tool_pieces(self.tools.feed(text), delta)
        if final and self.tools is not None:
            self._add_tool_pieces(self.tools.flush(), delta)
        self.total.merge(delta)
        return delta

    @staticmethod
    def _add_tool_pieces(pieces, delta: ChatDelta) -> None:
        for kind, value in pieces:
            if kind == "tool_call":
                delta.tool_calls.append(value)
            else:
                delta.content += value
