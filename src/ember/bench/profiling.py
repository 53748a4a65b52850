"""``--profile``: where one prefill and one decode step spend their time, kernel by kernel.

On a GPU each kernel's CUDA time is taken from the profiler trace; on CPU (no kernels) each
op's self CPU time. Shares are of the step's wall time, so on a GPU the shares' shortfall from
100% is time the device sat idle (launch overhead, host work).
"""

from __future__ import annotations

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ember.bench.ember_runner import random_prompts
from ember.bench.stats import now
from ember.engine.llm_engine import LLMEngine
from ember.sampling_params import SamplingParams

TOP_N = 15


def kernel_table(prof, wall_s: float, on_gpu: bool, top: int = TOP_N) -> list[dict]:
    events = prof.key_averages()
    if on_gpu:
        rows = [(e.key, e.count, e.self_device_time_total) for e in events if e.device_type == DeviceType.CUDA]
        if not rows:  # older profilers attach kernel time to the ops that launched them
            rows = [(e.key, e.count, e.self_device_time_total) for e in events if e.self_device_time_total > 0]
    else:
        rows = [(e.key, e.count, e.self_cpu_time_total) for e in events if e.self_cpu_time_total > 0]
    rows.sort(key=lambda r: r[2], reverse=True)
    return [
        {"name": name, "calls": int(count), "time_us": float(us), "share_of_step": us / 1e6 / wall_s}
        for name, count, us in rows[:top]
    ]


def profile_steps(engine: LLMEngine, batch_size: int, prompt_len: int, gen_len: int, seed: int) -> dict:
    """Profile the prefill phase (until every sequence has its first token) and then one decode
    step, on a configuration that has already been warmed up."""
    on_gpu = engine.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    vocab = min(engine.config.vocab_size, engine.tokenizer.vocab_size)
    prompts = random_prompts(vocab, batch_size, prompt_len, seed, rep=-2)  # unlike any timed rep
    params = SamplingParams(temperature=0.0, max_tokens=max(gen_len, 2), ignore_eos=True)
    seqs = []
    try:
        seqs = [engine.add_request(p, params) for p in prompts]
        with profile(activities=activities) as prefill_prof:
            start = now(engine.device)
            waiting_first = {s.seq_id for s in seqs}
            while waiting_first:
                waiting_first -= {o.seq.seq_id for o in engine.step()}
            prefill_s = now(engine.device) - start
        with profile(activities=activities) as decode_prof:
            start = now(engine.device)
            engine.step()
            decode_s = now(engine.device) - start
    finally:
        for s in seqs:
            engine.abort(s)
    unit = "CUDA time per kernel" if on_gpu else "self CPU time per op"
    return {
        "batch_size": batch_size,
        "prompt_len": prompt_len,
        "measure": unit,
        "prefill": {"wall_ms": 1000 * prefill_s, "top": kernel_table(prefill_prof, prefill_s, on_gpu)},
        "decode": {"wall_ms": 1000 * decode_s, "top": kernel_table(decode_prof, decode_s, on_gpu)},
    }
