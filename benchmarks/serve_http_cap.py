"""What the HTTP/SSE path sustains without a GPU: `ember serve`'s app with a scripted engine that
emits 128 tokens per request, one per step, each step taking STEP_SECONDS (a GPU step's time at
that batch), against streaming clients in the same process: raw httpx + json.loads (default) or
the official AsyncOpenAI client, whose per-chunk parsing alone caps near 10k chunks/s on the dev
box. Compares one SSE chunk per token with coalescing (several tokens per chunk for a client
that fell behind).

    python benchmarks/serve_http_cap.py 0.0016 [raw|openai]
"""

import asyncio
import importlib.util as _u
import json
import statistics
import sys
import time

sys.path.insert(0, "tests/server")
_s = _u.spec_from_file_location("rootconf", "tests/conftest.py")
_m = _u.module_from_spec(_s)
_s.loader.exec_module(_m)
from ember_test_server import scripted_llm, serve
from openai import AsyncOpenAI

try:  # the openai client's own HTTP library (named httpx2 from openai 3 on)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

import ember.server.async_engine as ae
from ember.tools.random_checkpoint import qwen3_config, write_random_checkpoint

folder = write_random_checkpoint("/tmp/hostprof/tiny", qwen3_config(**_m.TINY), _m.TOKENIZER_DIR)
llm = scripted_llm(folder)
llm.engine.script = [1000 + (i % 500) for i in range(128)]
llm.engine.step_delay = float(sys.argv[1])  # a GPU step's time at this batch
gen = serve(llm, api_key=None)
srv = next(gen)
real = ae.coalesce


CLIENT = sys.argv[2] if len(sys.argv) > 2 else "raw"


async def one(client):
    chunks, t_first = 0, None
    if CLIENT == "openai":
        stream = await client.completions.create(model="tiny", prompt="hello", max_tokens=128, stream=True)
        async for ch in stream:
            chunks += 1
            if t_first is None:
                t_first = time.perf_counter()
    else:
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 128, "stream": True}
        async with client.stream("POST", srv.base_url + "/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    json.loads(line[6:])
                    chunks += 1
                    if t_first is None:
                        t_first = time.perf_counter()
    return chunks, (time.perf_counter() - t_first) / 127


async def main(conc, total):
    if CLIENT == "openai":
        client = AsyncOpenAI(base_url=srv.base_url, api_key="x")
    else:
        client = httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None))
    sem = asyncio.Semaphore(conc)

    async def guarded():
        async with sem:
            return await one(client)

    t = time.perf_counter()
    res = await asyncio.gather(*[guarded() for _ in range(total)])
    dt = time.perf_counter() - t
    return sum(r[0] for r in res) / dt, 128 * total / dt, 1000 * statistics.median(r[1] for r in res)


for mode in ("per-token", "coalesced"):
    ae.coalesce = real if mode == "coalesced" else (lambda evs: evs)
    for c in (16, 64):
        chunks, toks, tpot = asyncio.run(main(c, c * 2))
        print(f"{mode:10s} concurrency {c:3d}: {toks:8,.0f} tok/s, {chunks:7,.0f} chunks/s, TPOT p50 {tpot:.2f} ms")
