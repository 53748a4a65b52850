"""``ember -i``: a multi-turn chat on the terminal through the model's chat template.

Thinking text is shown dimmed (on a terminal) or between ``[thinking]`` markers (in a pipe),
apart from the answer. ``/reset`` clears the conversation, ``/exit`` (or end of input) leaves,
Ctrl-C stops the current reply and keeps the chat going.
"""

from __future__ import annotations

import sys

from ember.reasoning import ThinkingSplitter

HELP = "commands: /reset clears the conversation, /exit leaves; Ctrl-C stops a reply"


class ReplyPrinter:
    """Writes thinking and answer pieces so that a reader can tell them apart."""

    def __init__(self, out=sys.stdout):
        self.out = out
        self.tty = out.isatty()
        self.kind: str | None = None

    def write(self, kind: str, text: str) -> None:
        if kind != self.kind:
            self._close()
            if kind == "thinking":
                self.out.write("\x1b[2m" if self.tty else "[thinking]\n")
            self.kind = kind
        self.out.write(text)
        self.out.flush()

    def _close(self) -> None:
        if self.kind == "thinking":
            self.out.write("\x1b[0m\n" if self.tty else "\n[/thinking]\n")

    def end(self) -> None:
        self._close()
        self.kind = None
        self.out.write("\n")
        self.out.flush()


def run_chat(llm, args, stdin=sys.stdin, stdout=sys.stdout) -> None:
    from ember.cli.main import sampling_params

    params = sampling_params(llm, args)
    messages: list[dict] = []
    interactive = stdin.isatty()
    if interactive:
        print(HELP, file=sys.stderr)
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            stdout.write("\n")
            continue
        if not line:
            break
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            messages.clear()
            print("(conversation cleared)", file=stdout, flush=True)
            continue
        messages.append({"role": "user", "content": line})
        text = llm.tokenizer.apply_chat_template(messages, enable_thinking=args.think)
        ids = llm.tokenizer.encode(text)
        splitter, printer = ThinkingSplitter(), ReplyPrinter(stdout)
        parts = {"thinking": [], "answer": []}
        stream = llm.stream(ids, params)
        try:
            for out in stream:
                for kind, piece in splitter.feed(out.text):
                    parts[kind].append(piece)
                    printer.write(kind, piece)
        except KeyboardInterrupt:
            stream.close()  # aborts the request and frees its KV blocks
            printer.write("answer", " [interrupted]")
        for kind, piece in splitter.flush():
            parts[kind].append(piece)
            printer.write(kind, piece)
        printer.end()
        reply = {"role": "assistant", "content": "".join(parts["answer"]).strip()}
        if parts["thinking"]:
            reply["reasoning_content"] = "".join(parts["thinking"]).strip()
        messages.append(reply)
