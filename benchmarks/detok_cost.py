"""Host cost of streaming detokenization per generated token, the way the engine drives it:
N streams, one token each per step, with the real Qwen3 tokenizer (CPU only, no model).

    python benchmarks/detok_cost.py [--streams 64] [--tokens 512] [--window]

Two workloads: "text" is real text (English, code, CJK, emoji) tokenized, "random" is uniformly
random ids (lots of byte pieces and broken UTF-8). Each is run without and with a stop string.
Also counts tokenizer.decode calls per token. ``--window`` hides the tokenizer's byte table, so the
detokenizer takes its general path (a decode window per token, as every token did before).
"""

import argparse
import random
import time
from pathlib import Path

from ember.tokenizer import IncrementalDetokenizer, Tokenizer

FOLDER = Path(__file__).resolve().parents[1] / "tests" / "data" / "qwen3-tokenizer"
TEXT = ("The quick brown fox jumps over the lazy dog. def f(x):\n    return x * 2\n"
        "你好，世界！机器学习和自然语言处理。こんにちは。emoji 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 naïve café. ")


class CountingTokenizer:
    """Forwards to the real tokenizer and counts decode calls (optionally without the byte table)."""

    def __init__(self, tok, window=False):
        self._tok, self._window, self.calls = tok, window, 0

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def byte_pieces(self, skip_special_tokens=False):
        return None if self._window else self._tok.byte_pieces(skip_special_tokens)

    def decode(self, ids, skip_special_tokens=False):
        self.calls += 1
        return self._tok.decode(ids, skip_special_tokens)


def workloads(tok, streams, tokens, rng):
    text_ids = tok.encode(TEXT * (tokens // 20 + 2))
    text = [text_ids[(37 * s) % 200:][:tokens] for s in range(streams)]
    rand = [[rng.randrange(tok.vocab_size) for _ in range(tokens)] for _ in range(streams)]
    return {"text": text, "random": rand}


def run(tok, seqs, stop):
    prompt = tok.encode("Write something long.")
    detoks = [IncrementalDetokenizer(tok, prompt, stop=stop) for _ in seqs]
    t = time.perf_counter()
    for step in range(len(seqs[0])):  # one engine step: every stream gets one token
        for d, ids in zip(detoks, seqs):
            d.add(ids[step])
    for d in detoks:
        d.flush()
    return time.perf_counter() - t, detoks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--window", action="store_true", help="the general path, without the byte table")
    args = ap.parse_args()
    real = tok = Tokenizer.from_pretrained(FOLDER)
    if args.window:  # the timed tokenizer is the real one, without a byte table
        tok = Tokenizer.from_pretrained(FOLDER)
        tok._byte_pieces = {False: None, True: None}
    run(tok, [tok.encode(TEXT)], None)  # warm up (and build any lazy tables)
    n = args.streams * args.tokens
    for name, seqs in workloads(real, args.streams, args.tokens, random.Random(0)).items():
        for stop in (None, ["<<STOP>>"]):
            best = min(run(tok, seqs, stop)[0] for _ in range(args.repeats))
            counting = CountingTokenizer(real, args.window)
            run(counting, seqs, stop)
            print(f"{name:6} stop={'yes' if stop else 'no ':3}  {best / n * 1e6:6.2f} us/token  "
                  f"{best / args.tokens * 1e3:6.3f} ms/step ({args.streams} streams)  "
                  f"{counting.calls / n:4.2f} decode calls/token")


if __name__ == "__main__":
    main()
