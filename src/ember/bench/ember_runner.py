"""Ember's side of the benchmark: load once, then time prefill and decode per configuration.

Generation goes through the engine's public step loop with greedy sampling, ``ignore_eos`` and
a fixed ``max_tokens``, so every rep does the same work. The prefill phase ends when every
sequence has its first token (several steps when the prompts exceed one step's token budget);
every step after that is decode.
"""

from __future__ import annotations

import gc
import inspect
import random
from dataclasses import dataclass

import torch

from ember.bench.jit_watch import TritonBuildWatch
from ember.bench.stats import now, peak_memory_bytes, reset_peak_memory, summarize
from ember.engine.kv_cache import kv_bytes_per_block
from ember.engine.llm_engine import LLMEngine
from ember.engine.sequence import Sequence
from ember.entrypoints.llm import LLM
from ember.sampling_params import SamplingParams


def random_prompts(vocab: int, batch_size: int, prompt_len: int, seed: int, rep: int = 0) -> list[list[int]]:
    """Seeded random token ids, never all zeros. Each rep gets fresh prompts so no cache can
    carry one rep's prefill into the next; the same (seed, shape, rep) gives the same prompts,
    so Ember and HF see identical inputs."""
    rng = random.Random(f"{seed}-{batch_size}-{prompt_len}-{rep}")
    return [[rng.randrange(1, vocab) for _ in range(prompt_len)] for _ in range(batch_size)]


def load_llm(model: str, dtype: str, device: str | None, load_format: str, max_batch: int, max_len: int,
             seed: int, enforce_eager: bool, async_scheduling: bool = True,
             fold_norms: bool = True) -> tuple[LLM, bool]:
    """The LLM sized for the largest configuration. Returns it and whether the engine took
    ``enforce_eager`` (an engine without CUDA graphs has no such argument and is eager anyway).
    Prefix caching is off: the benchmark measures prefill compute, not cache hits."""
    kwargs = dict(model=model, dtype=dtype, device=device, load_format=load_format, max_model_len=max_len,
                  max_num_seqs=max_batch, seed=seed, progress=False)
    accepted = inspect.signature(LLM.__init__).parameters
    if "enable_prefix_caching" in accepted:
        kwargs["enable_prefix_caching"] = False
    takes_eager = "enforce_eager" in accepted
    if takes_eager:
        kwargs["enforce_eager"] = enforce_eager
    if "async_scheduling" in accepted:
        kwargs["async_scheduling"] = async_scheduling
    if "fold_norms" in accepted:
        kwargs["fold_norms"] = fold_norms
    return LLM(**kwargs), takes_eager


@dataclass
class RunTiming:
    prefill_s: float
    decode_s: float


def generate_once(engine: LLMEngine, prompts: list[list[int]], gen_len: int) -> RunTiming:
    params = SamplingParams(temperature=0.0, max_tokens=gen_len, ignore_eos=True)
    seqs: list[Sequence] = []
    try:
        start = now(engine.device)
        seqs = [engine.add_request(p, params) for p in prompts]
        first_tokens_at, waiting_first = None, {s.seq_id for s in seqs}
        while engine.has_unfinished():
            # A step ends on the host reading the tokens of the step before (or of this one,
            # without async scheduling), so a token counts when the host has it.
            outputs = engine.step()
            if first_tokens_at is None:
                waiting_first -= {o.seq.seq_id for o in outputs}
                if not waiting_first:
                    first_tokens_at = now(engine.device)
        end = now(engine.device)
    finally:
        for s in seqs:
            engine.abort(s)
    return RunTiming(prefill_s=first_tokens_at - start, decode_s=end - first_tokens_at)


def fits(engine: LLMEngine, batch_size: int, prompt_len: int, gen_len: int) -> str | None:
    """Why a configuration cannot run without preemption, or None when it fits."""
    total = prompt_len + gen_len
    if total > engine.max_model_len:
        return f"prompt + generation ({total}) exceeds the context of {engine.max_model_len} tokens"
    bm = engine.block_manager
    need = batch_size * bm.blocks_needed(total)
    if need > bm.num_blocks:
        return f"needs {need} KV blocks, the cache has {bm.num_blocks}"
    return None


def measure_config(llm: LLM, batch_size: int, prompt_len: int, gen_len: int, reps: int, seed: int) -> dict:
    """Warm-up once, then ``reps`` timed generations; figures as medians with min/max."""
    engine = llm.engine
    reason = fits(engine, batch_size, prompt_len, gen_len)
    if reason is not None:
        return {"skipped": reason}
    vocab = min(engine.config.vocab_size, engine.tokenizer.vocab_size)
    # Warm-up (rep -1): Triton compiles and autotunes per shape, CUDA graphs are captured.
    generate_once(engine, random_prompts(vocab, batch_size, prompt_len, seed, rep=-1), gen_len)
    preemptions = engine.scheduler.num_preemptions
    reset_peak_memory(engine.device)
    with TritonBuildWatch() as builds:  # a kernel built inside a rep would read as a slow rep
        runs = [generate_once(engine, random_prompts(vocab, batch_size, prompt_len, seed, rep), gen_len)
                for rep in range(reps)]
    decode_steps = gen_len - 1
    return {
        "skipped": None,
        "ttft_ms": summarize([1000 * r.prefill_s for r in runs]),
        "prefill_tok_s": summarize([batch_size * prompt_len / r.prefill_s for r in runs]),
        "decode_tok_s": summarize([batch_size * decode_steps / r.decode_s for r in runs]),
        "decode_tok_s_per_seq": summarize([decode_steps / r.decode_s for r in runs]),
        "ms_per_token": summarize([1000 * r.decode_s / decode_steps for r in runs]),
        "peak_memory_bytes": peak_memory_bytes(engine.device),
        "preemptions": engine.scheduler.num_preemptions - preemptions,
        "triton_builds": builds.builds,
    }


def kv_cache_info(llm: LLM) -> dict:
    engine = llm.engine
    bm = engine.block_manager
    return {
        "max_num_seqs": engine.args.max_num_seqs,
        "max_model_len": engine.max_model_len,
        "max_num_batched_tokens": getattr(engine, "max_num_batched_tokens", engine.args.max_num_batched_tokens),
        "prefix_caching": bool(getattr(bm, "enable_prefix_caching", False)),
        "block_size": bm.block_size,
        "kv_cache_tokens": bm.num_blocks * bm.block_size,
        "kv_cache_bytes": bm.num_blocks * kv_bytes_per_block(engine.config, bm.block_size, engine.dtype),
    }


def free_llm(llm: LLM) -> None:
    """Drop the engine and its KV cache so the HF runs get the device memory back."""
    device = llm.engine.device
    del llm.engine
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
