"""Host cost of the server's engine-thread post-processing per step (AsyncEngine._step with
metrics on), with a fake engine that returns N finished-free outputs instantly.

    python benchmarks/serve_step_cost.py
"""

import asyncio
import threading
import time

from ember.engine.llm_engine import StepOutput
from ember.sampling_params import SamplingParams
from ember.server.async_engine import AsyncEngine, RequestGroup
from ember.server.metrics import ServerMetrics


class FakeSeq:
    def __init__(self, i):
        self.seq_id = i
        self.params = SamplingParams(max_tokens=10**6)
        self.logprobs = []
        self.finish_reason = None
        self.num_prompt_tokens = 5
        self.num_output_tokens = 0


class FakeEngine:
    def __init__(self, n):
        self.seqs = [FakeSeq(i) for i in range(n)]

    def stats(self):
        return {"num_preemptions": 0}

    def step(self):
        return [StepOutput(s, 1234, "ab", False, 3) for s in self.seqs]


loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
for n in (16, 64, 256):
    eng = FakeEngine(n)
    ae = AsyncEngine(eng, 256, 16, ServerMetrics("m"))
    groups = []
    for s in eng.seqs:
        g = RequestGroup([([1], SamplingParams())], loop)
        ae._by_seq[s.seq_id] = (g, 0)
        groups.append(g)
    for _ in range(20):
        ae._step()
    t = time.perf_counter()
    N = 300
    for _ in range(N):
        ae._step()
        ae._publish_stats()
    dt = (time.perf_counter() - t) / N
    print(f"{n} seqs: {dt * 1e3:.3f} ms per step, {dt / n * 1e6:.1f} us per token")
