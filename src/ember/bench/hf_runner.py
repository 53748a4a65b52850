"""Hugging Face transformers on the same weights and prompts, as the comparison baseline.

Two variants: eager ``generate`` with its dynamic cache, and ``generate`` with a static cache,
which makes transformers compile its decode forward itself (``torch.compile``, CUDA graphs;
the prompt's forward stays eager): HF's own recipe for fast generation. Each configuration of
each variant is guarded, so a failure (a compile error, out of memory) is recorded as a string
instead of ending the run.
"""

from __future__ import annotations

import gc
import importlib.util
import time
from pathlib import Path

import torch

from ember.bench.ember_runner import random_prompts
from ember.bench.stats import now, peak_memory_bytes, reset_peak_memory, summarize
from ember.errors import EmberError

VARIANTS = ("eager", "static_compiled")


def require_transformers() -> None:
    if importlib.util.find_spec("transformers") is None:
        raise EmberError("--compare hf needs Hugging Face transformers: pip install 'transformers>=4.51'")


def load_hf_model(path: Path, dtype: torch.dtype, device: torch.device):
    import transformers
    from transformers import Qwen3ForCausalLM

    transformers.logging.set_verbosity_error()  # generation-config notes on every call drown the table
    transformers.logging.disable_progress_bar()
    # transformers renamed torch_dtype to dtype in 4.56; older versions would ignore `dtype`.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    return Qwen3ForCausalLM.from_pretrained(str(path), **{dtype_kw: dtype}).to(device).eval()


def _first_token_clock():
    """A generate() streamer that notes when the first generated tokens reach the host."""
    from transformers.generation.streamers import BaseStreamer

    class FirstTokenClock(BaseStreamer):
        def __init__(self):
            self.calls = 0
            self.first_token_at = None

        def put(self, value):
            self.calls += 1  # call 1 is the prompt, call 2 the first sampled tokens (already on host)
            if self.calls == 2:
                self.first_token_at = time.perf_counter()

        def end(self):
            pass

    return FirstTokenClock()


def generate_once(model, input_ids: torch.Tensor, gen_len: int, static: bool) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one greedy generate() of exactly ``gen_len`` tokens."""
    clock = _first_token_clock()
    kwargs = dict(cache_implementation="static") if static else {}  # static: generate compiles itself
    start = now(input_ids.device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
            temperature=None, top_p=None, top_k=None, min_new_tokens=gen_len, max_new_tokens=gen_len,
            pad_token_id=model.config.eos_token_id, streamer=clock, **kwargs,
        )
    end = now(input_ids.device)
    if out.shape[1] != input_ids.shape[1] + gen_len:
        raise RuntimeError(f"HF generated {out.shape[1] - input_ids.shape[1]} tokens, expected {gen_len}")
    return clock.first_token_at - start, end - clock.first_token_at


def fresh_compile(model) -> None:
    """Drop what transformers compiled for the previous configuration, so each (batch, prompt)
    shape gets its own graphs and never runs into dynamo's recompile limit. (Compiling the whole
    forward ourselves, prompt pass included, failed with transformers 5.17: a later CUDA-graph
    replay overwrote the prompt pass's outputs while generate still read them.)"""
    torch._dynamo.reset()
    if hasattr(model, "_compiled_call"):  # where generate keeps its compiled __call__
        del model._compiled_call


def measure_variant(model, vocab: int, batch_size: int, prompt_len: int, gen_len: int, reps: int, seed: int,
                    static: bool) -> dict:
    """Warm-up, then ``reps`` timed generations on the same prompts Ember got, rep by rep."""
    def ids(rep: int) -> torch.Tensor:
        prompts = random_prompts(vocab, batch_size, prompt_len, seed, rep)
        return torch.tensor(prompts, dtype=torch.long, device=model.device)

    device = model.device
    generate_once(model, ids(-1), gen_len, static)  # warm-up (and, compiled, the compile)
    reset_peak_memory(device)
    runs = [generate_once(model, ids(rep), gen_len, static) for rep in range(reps)]
    steps = gen_len - 1
    return {
        "error": None,
        "ttft_ms": summarize([1000 * p for p, _ in runs]),
        "prefill_tok_s": summarize([batch_size * prompt_len / p for p, _ in runs]),
        "decode_tok_s": summarize([batch_size * steps / d for _, d in runs]),
        "ms_per_token": summarize([1000 * d / steps for _, d in runs]),
        "peak_memory_bytes": peak_memory_bytes(device),
    }


def _error(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


def run_hf(path: Path, dtype: torch.dtype, device: torch.device, configs: list[tuple[int, int]], gen_len: int,
           reps: int, seed: int, vocab: int, log, variants: tuple[str, ...] = VARIANTS) -> dict[tuple[int, int], dict]:
    """{(batch, prompt_len): {"eager": figures or error, "static_compiled": figures, error or skip}}."""
    model = load_hf_model(path, dtype, device)
    results: dict[tuple[int, int], dict] = {c: {} for c in configs}
    for variant in variants:
        static = variant == "static_compiled"
        for batch_size, prompt_len in configs:
            if static and device.type != "cuda":
                results[(batch_size, prompt_len)][variant] = {
                    "error": None, "skipped": "CPU: torch.compile + CUDA graphs need a GPU"}
                continue
            log(f"HF {variant}: batch {batch_size}, prompt {prompt_len}")
            try:
                if static:
                    fresh_compile(model)
                figures = {**measure_variant(model, vocab, batch_size, prompt_len, gen_len, reps, seed, static),
                           "skipped": None}
                if static and not hasattr(model, "_compiled_call"):  # generate's own criteria said no
                    figures["warning"] = "transformers did not compile the forward: static cache only"
                    log(f"HF {variant}: {figures['warning']}")
            except Exception as exc:  # recorded, not fatal: one failing variant must not lose the run
                figures = {**_error(exc), "skipped": None}
                log(f"HF {variant} failed: {figures['error'][:200]}")
            results[(batch_size, prompt_len)][variant] = figures
            if device.type == "cuda":
                torch.cuda.empty_cache()
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results
