"""Online load on `ember serve`: TTFT, time per output token and output tok/s per concurrency.

Starts `ember serve` on 127.0.0.1 at a free port (or uses --url of a running one, loopback only),
then for each --concurrency level keeps that many streaming requests in flight until
--num-requests have run or --max-seconds have passed. The default client reads the SSE stream
with httpx and json.loads: the official AsyncOpenAI client (--client openai) builds pydantic
objects per chunk and tops out near 10k chunks/s in one process, which at 64 streams measures
the load generator rather than the server (benchmarks/NOTES.md, session 4).

    python benchmarks/serve_load.py -m ./Qwen3-0.6B --load-format dummy --concurrency 1,16,64
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 -m ./Qwen3-0.6B

Requests use random token-id prompts of --prompt-len on /v1/completions (or short text on
/v1/chat/completions), greedy, ignore_eos, exactly --max-tokens output tokens each.
TTFT is until the first chunk with text; TPOT is (last chunk - first chunk) / (output tokens - 1),
vLLM's definition, with the output token count from the stream's usage (a token whose bytes do not
yet form a character arrives with the next chunk, so chunks undercount tokens).
Writes serve_load.json and serve_load.md to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

try:  # the openai client's own HTTP library (named httpx2 from openai 3 on)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

from ember.bench import report
from ember.bench.environment import default_out_dir, environment, today

SCHEMA_VERSION = 1
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TOKEN_ID_BOUND = 10_000  # as in benchmarks/throughput.py: real tokens of Qwen3's vocabulary


def log(message: str) -> None:
    print(f"serve_load: {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def dist(values: list[float]) -> dict:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99),
            "mean": sum(values) / len(values) if values else None, "n": len(values)}


# ----- the server ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Server:
    """`ember serve` as a child process on loopback; stopped with SIGINT (uvicorn's graceful path)."""

    def __init__(self, args, log_path: Path):
        self.port = free_port()  # a race with another process is possible, and would fail loudly below
        self.argv = [sys.executable, "-m", "ember.server.cli", args.model, "--host", "127.0.0.1",
                     "--port", str(self.port), "--load-format", args.load_format, "--dtype", args.dtype,
                     "--max-num-seqs", str(max(args.concurrency)), "--log-level", "warning"]
        if args.device:
            self.argv += ["--device", args.device]
        if args.max_model_len:
            self.argv += ["--max-model-len", str(args.max_model_len)]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc = None

    def __enter__(self):
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600  # loading a large checkpoint from disk takes minutes
        while not healthy(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                tail = self.log_path.read_text()[-2000:]
                raise SystemExit(f"serve_load: `ember serve` did not come up:\n{tail}")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


# ----- the load -------------------------------------------------------------------------------------

def make_request(args, rng: random.Random) -> dict:
    common = dict(model=args.served_model, max_tokens=args.max_tokens, temperature=0.0, stream=True,
                  stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    if args.endpoint == "chat":
        # Text of random numbers: a prompt of roughly --prompt-len tokens that no prefix cache shares.
        text = " ".join(str(rng.randrange(TOKEN_ID_BOUND)) for _ in range(max(1, args.prompt_len // 3)))
        return {**common, "messages": [{"role": "user", "content": text}],
                "extra_body": {"ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}}}
    return {**common, "prompt": [rng.randrange(1, TOKEN_ID_BOUND) for _ in range(args.prompt_len)]}


class RawClient:
    """Streams a request and yields each SSE event's JSON as a dict: the few lines a load
    generator needs, without a per-chunk object model."""

    def __init__(self, base_url: str, api_key: str, timeout: float):
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.http = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None))

    async def stream(self, endpoint: str, body: dict):
        body = {k: v for k, v in body.items() if k != "extra_body"} | body.get("extra_body", {})
        path = "/chat/completions" if endpoint == "chat" else "/completions"
        async with self.http.stream("POST", self.base_url + path, json=body, headers=self.headers) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    yield json.loads(line[6:])

    async def close(self):
        await self.http.aclose()


async def _openai_chunks(client, endpoint: str, body: dict):
    """The official client's chunks, as the dicts RawClient yields."""
    create = client.chat.completions.create if endpoint == "chat" else client.completions.create
    async for chunk in await create(**body):
        yield chunk.model_dump()


async def one_request(client, args, body: dict) -> dict:
    """One streaming request's timings; an exception is recorded, not raised."""
    start = time.perf_counter()
    first = last = None
    output_tokens = None
    try:
        chunks = (client.stream(args.endpoint, body) if isinstance(client, RawClient)
                  else _openai_chunks(client, args.endpoint, body))
        async for chunk in chunks:
            if chunk.get("usage"):
                output_tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices") or ():
                if args.endpoint == "chat":
                    text = c["delta"].get("content") or c["delta"].get("reasoning_content")
                else:
                    text = c.get("text")
                if text:
                    last = time.perf_counter()
                    first = first or last
    except Exception as exc:  # one failed request is a data point (e.g. a 503), not the end of the run
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    end = time.perf_counter()
    ttft = (first or end) - start
    tpot = (last - first) / (output_tokens - 1) if first and output_tokens and output_tokens > 1 else None
    return {"error": None, "ttft_s": ttft, "tpot_s": tpot, "latency_s": end - start, "output_tokens": output_tokens or 0}


async def run_level(client, args, concurrency: int) -> dict:
    """``concurrency`` workers share one request counter, so that many are always in flight until
    --num-requests have started or --max-seconds have passed (bounded both ways)."""
    rng = random.Random(f"{args.seed}-{concurrency}")
    bodies = [make_request(args, rng) for _ in range(args.num_requests)]
    results, next_index = [], 0
    start = time.perf_counter()
    deadline = start + args.max_seconds

    async def worker():
        nonlocal next_index
        while next_index < len(bodies) and time.perf_counter() < deadline:
            body = bodies[next_index]
            next_index += 1
            results.append(await one_request(client, args, body))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    ok = [r for r in results if r["error"] is None]
    errors = [r["error"] for r in results if r["error"] is not None]
    out_tokens = sum(r["output_tokens"] for r in ok)
    ms = lambda key: [1000 * r[key] for r in ok if r[key] is not None]
    return {
        "concurrency": concurrency, "requests": len(results), "completed": len(ok), "errors": len(errors),
        "first_error": errors[0] if errors else None, "elapsed_s": elapsed,
        "stopped_by_time": len(results) < args.num_requests,
        "output_tokens": out_tokens, "output_tok_s": out_tokens / elapsed,
        "requests_per_s": len(ok) / elapsed,
        "ttft_ms": dist(ms("ttft_s")), "tpot_ms": dist(ms("tpot_s")), "latency_ms": dist(ms("latency_s")),
    }


async def run_all(args, url: str) -> list[dict]:
    if args.client == "raw":
        client = RawClient(url + "/v1", args.api_key or "none", timeout=args.max_seconds + 60)
    else:
        from openai import AsyncOpenAI  # only here: the raw client needs no openai package

        client = AsyncOpenAI(base_url=url + "/v1", api_key=args.api_key or "none", max_retries=0,
                             timeout=args.max_seconds + 60)
    try:
        # Warm-up: the first request pays for Triton compiles; it must not land in the figures.
        await one_request(client, args, {**make_request(args, random.Random(-1)), "max_tokens": 2})
        levels = []
        for c in args.concurrency:
            log(f"concurrency {c}: up to {args.num_requests} requests, {args.max_seconds:g} s")
            levels.append(await run_level(client, args, c))
            lv = levels[-1]
            log(f"concurrency {c}: {lv['output_tok_s']:,.1f} output tok/s, TTFT p50 "
                f"{report.number(lv['ttft_ms']['p50'], 1)} ms, TPOT p50 {report.number(lv['tpot_ms']['p50'], 2)} ms")
        return levels
    finally:
        await client.close()


# ----- report -------------------------------------------------------------------------------------

def markdown(r: dict) -> str:
    s = r["settings"]
    headers = ["concurrency", "done / sent", "errors", "output tok/s", "TTFT p50 ms", "TTFT p99 ms",
               "TPOT p50 ms", "TPOT p99 ms", "latency p50 ms"]
    rows = [[str(lv["concurrency"]), f"{lv['completed']} / {lv['requests']}", str(lv["errors"]),
             report.number(lv["output_tok_s"], 1), report.number(lv["ttft_ms"]["p50"], 1),
             report.number(lv["ttft_ms"]["p99"], 1), report.number(lv["tpot_ms"]["p50"], 2),
             report.number(lv["tpot_ms"]["p99"], 2), report.number(lv["latency_ms"]["p50"], 1)]
            for lv in r["levels"]]
    env = r["environment"]
    return "\n".join([
        f"# Online load: {r['model']} on {env['gpu_name']}",
        f"{r['date']} · `{r['command']}`",
        f"- **Server:** {r['server']['how']}",
        f"- **Requests:** streaming /v1/{'chat/completions' if s['endpoint'] == 'chat' else 'completions'}, "
        f"prompt ~{s['prompt_len']} tokens, {s['max_tokens']} output tokens (ignore_eos, greedy), up to "
        f"{s['num_requests']} requests or {s['max_seconds']:g} s per level",
        f"- **Client side:** {s.get('client', 'openai')} client "
        f"({'httpx + json.loads' if s.get('client') == 'raw' else 'official AsyncOpenAI'}), one process; "
        f"torch {env['torch']}, ember {env['ember']} (the server's device: see its log)",
        "",
        report.md_table(headers, rows),
        "",
    ])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", required=True, help="model to serve (or the served model id with --url)")
    p.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000 (loopback only)")
    p.add_argument("--api-key", default=None, help="for --url servers that need one")
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated levels (default: %(default)s)")
    p.add_argument("--num-requests", type=int, default=128, help="requests per level at most")
    p.add_argument("--max-seconds", type=float, default=120, help="time per level at most; no new request after it")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--endpoint", default="completions", choices=["completions", "chat"])
    p.add_argument("--client", default="raw", choices=["raw", "openai"],
                   help="raw: httpx + json.loads (default); openai: the official AsyncOpenAI client")
    p.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--device", default=None, help="the started server's device: cuda:N or cpu")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<date>-<gpu>-<model>-serve/)")
    return p


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not args.concurrency or min(args.concurrency) < 1 or args.num_requests < 1 or args.max_tokens < 1:
        raise SystemExit("serve_load: concurrency, --num-requests and --max-tokens must be >= 1")
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        raise SystemExit(f"serve_load: --url must be a loopback address ({', '.join(sorted(LOOPBACK))})")
    import torch

    # Figures describe the server's device; when this script starts it, it is this machine's.
    env = environment(torch.device(args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")))
    with tempfile.TemporaryDirectory(prefix="ember-serve-load-") as scratch:
        if args.url:
            url, how = args.url.rstrip("/"), f"already running at {args.url}"
            args.served_model = args.model
            levels = asyncio.run(run_all(args, url))
        else:
            with Server(args, Path(scratch) / "server.log") as server:
                url, how = server.url, "ember serve " + shlex.join(server.argv[3:])
                args.served_model = args.model
                log(f"server up at {url}")
                levels = asyncio.run(run_all(args, url))
    settings = {k: getattr(args, k) for k in ("concurrency", "num_requests", "max_seconds", "prompt_len", "max_tokens",
                                              "endpoint", "client", "load_format", "dtype", "seed")}
    result = {
        "schema_version": SCHEMA_VERSION, "date": today(),
        "command": shlex.join(["python", "benchmarks/serve_load.py", *argv]),
        "environment": env, "model": args.model, "server": {"url": url, "how": how},
        "settings": settings, "levels": levels,
    }
    out = args.out or default_out_dir(env["gpu_name"], args.model, "-serve")
    md = markdown(result)
    paths = report.write_json_md(out, "serve_load", result, md)
    print(md)
    log("wrote " + ", ".join(map(str, paths)))
    return result


if __name__ == "__main__":
    main()
