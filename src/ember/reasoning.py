"""Split Qwen3 output text into thinking (``<think>…</think>``) and answer, incrementally."""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class ThinkingSplitter:
    """Feed text deltas; get back ``[(kind, text), …]`` with kind "thinking" or "answer".

    Thinking is only recognised when the output opens with ``<think>`` (after whitespace) or
    when ``starts_in_thinking`` (a template that put ``<think>`` in the prompt). Tags split
    across deltas are held back until they are complete.
    """

    def __init__(self, starts_in_thinking: bool = False):
        self.state = "thinking" if starts_in_thinking else "start"
        self.pending = ""
        self.strip_newlines = False  # newlines right after a tag belong to neither part

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.pending += text
        out: list[tuple[str, str]] = []
        while self.pending:
            if self.strip_newlines:
                self.pending = self.pending.lstrip("\n")
                if not self.pending:
                    break
                self.strip_newlines = False
            if self.state == "start":
                stripped = self.pending.lstrip()
                if stripped.startswith(THINK_OPEN):
                    self.pending = stripped[len(THINK_OPEN):]
                    self.state, self.strip_newlines = "thinking", True
                elif THINK_OPEN.startswith(stripped):
                    break  # could still become "<think>"
                else:
                    self.state = "answer"
            elif self.state == "thinking":
                idx = self.pending.find(THINK_CLOSE)
                if idx >= 0:
                    if idx:
                        out.append(("thinking", self.pending[:idx]))
                    self.pending = self.pending[idx + len(THINK_CLOSE):]
                    self.state, self.strip_newlines = "answer", True
                    continue
                keep = _partial_suffix(self.pending, THINK_CLOSE)
                emit = self.pending[: len(self.pending) - keep]
                if emit:
                    out.append(("thinking", emit))
                self.pending = self.pending[len(self.pending) - keep:]
                break
            else:
                out.append(("answer", self.pending))
                self.pending = ""
        return out

    def flush(self) -> list[tuple[str, str]]:
        if not self.pending:
            return []
        kind = "thinking" if self.state == "thinking" else "answer"
        text, self.pending = self.pending, ""
        return [(kind, text)]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
