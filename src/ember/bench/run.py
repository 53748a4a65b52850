"""One ``ember bench`` run from parsed flags to the files under --out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ember.bench import ceilings, report
from ember.bench.ember_runner import free_llm, kv_cache_info, load_llm, measure_config
from ember.bench.environment import command_line, default_out_dir, environment, today
from ember.bench.roofline import ModelShape, decode_roofline, prefill_roofline
from ember.bench.stats import ratio
from ember.config import ModelConfig, parse_dtype
from ember.engine.llm_engine import pick_device
from ember.loader.model_path import resolve_model_path

SCHEMA_VERSION = 1


def log(message: str) -> None:
    print(f"ember bench: {message}", file=sys.stderr, flush=True)


def shared_random_weights(model_path: Path, dtype: torch.dtype, device: torch.device, seed: int, scratch: Path) -> Path:
    """--load-format dummy with --compare hf: write the random weights to disk once so that
    both engines load the very same tensors."""
    from ember.tools.random_checkpoint import write_random_checkpoint

    raw = json.loads((model_path / "config.json").read_text())
    return write_random_checkpoint(scratch / "weights", raw, tokenizer_dir=model_path, seed=seed, dtype=dtype,
                                   device=str(device) if device.type == "cuda" else "cpu")


def weights_source(asked: str, loaded: str) -> str:
    if asked == "auto":
        return "checkpoint"
    return "random checkpoint written once, loaded by Ember and HF" if loaded == "auto" else "random, in memory"


def config_result(batch_size: int, prompt_len: int, gen_len: int, ember: dict, hf: dict | None,
                  shape: ModelShape, ceiling: dict) -> dict:
    pre = prefill_roofline(shape, batch_size, prompt_len, ceiling["matmul"]["flop_per_s"])
    dec = decode_roofline(shape, batch_size, prompt_len, gen_len, ceiling["copy"]["bytes_per_s"])
    ran = ember.get("skipped") is None

    def median(figures: dict | None, key: str) -> float | None:
        return figures[key]["median"] if figures and key in figures else None

    result = {
        "batch_size": batch_size, "prompt_len": prompt_len, "gen_len": gen_len,
        "ember": ember,
        "roofline": {"prefill": pre, "decode": dec},
        "share_of_roofline": {
            "prefill": ratio(median(ember, "prefill_tok_s"), pre["tok_s"]) if ran else None,
            "decode": ratio(median(ember, "decode_tok_s"), dec["tok_s"]) if ran else None,
        },
        "hf": hf,
        "ember_over_hf": None,
    }
    if hf is not None:
        result["ember_over_hf"] = {
            variant: {
                "prefill": ratio(median(ember, "prefill_tok_s"), median(figures, "prefill_tok_s")),
                "decode": ratio(median(ember, "decode_tok_s"), median(figures, "decode_tok_s")),
            }
            for variant, figures in hf.items()
        }
    return result


def run_bench(args, settings: dict, argv: list[str], scratch: Path) -> dict:
    if settings["compare"] == "hf":
        from ember.bench.hf_runner import require_transformers

        require_transformers()  # before minutes of Ember measurements, not after
    device = pick_device(args.device)
    model_path = resolve_model_path(args.model)
    cfg = ModelConfig.from_folder(model_path)
    dtype = parse_dtype(args.dtype, default=cfg.torch_dtype)
    env = environment(device)
    batch_sizes, prompt_lens, gen_len, reps = (settings[k] for k in ("batch_sizes", "prompt_lens", "gen_len", "reps"))

    log(f"measuring the ceilings on {env['gpu_name']}")
    ceiling = {"copy": ceilings.copy_rate(device), "matmul": ceilings.matmul_rate(device, dtype)}

    load_path, load_format = model_path, args.load_format
    if settings["compare"] == "hf" and load_format == "dummy":
        log("writing one random checkpoint that Ember and HF both load")
        load_path, load_format = shared_random_weights(model_path, dtype, device, args.seed, scratch), "auto"

    max_len = settings.get("max_model_len") or min(max(prompt_lens) + gen_len, cfg.max_position_embeddings)
    llm, takes_eager = load_llm(str(load_path), args.dtype, str(device), load_format, max(batch_sizes), max_len,
                                args.seed, args.enforce_eager, getattr(args, "async_scheduling", True),
                                getattr(args, "fold_norms", True))
    shape = ModelShape.from_model(llm.engine.config, llm.engine.model, dtype)
    vocab = min(cfg.vocab_size, llm.tokenizer.vocab_size)
    configs = [(b, p) for b in batch_sizes for p in prompt_lens]
    ember_results = {}
    for b, p in configs:
        log(f"Ember: batch {b}, prompt {p}, {gen_len} new tokens, {reps} reps")
        ember_results[(b, p)] = measure_config(llm, b, p, gen_len, reps, args.seed)
    ran = [c for c in configs if ember_results[c]["skipped"] is None]
    profile = None
    if settings["profile"] and ran:
        from ember.bench.profiling import profile_steps

        log(f"profiling batch {ran[0][0]}, prompt {ran[0][1]}")
        profile = profile_steps(llm.engine, *ran[0], gen_len, args.seed)
    engine_info = {**kv_cache_info(llm), "enforce_eager_supported": takes_eager}
    free_llm(llm)
    del llm
    log("measuring the ceilings again")  # the higher reading of each is the roofline (ceilings.higher)
    ceiling = {"copy": ceilings.higher(ceiling["copy"], ceilings.copy_rate(device), "bytes_per_s"),
               "matmul": ceilings.higher(ceiling["matmul"], ceilings.matmul_rate(device, dtype), "flop_per_s")}

    hf_results = {}
    if settings["compare"] == "hf":
        from ember.bench.hf_runner import run_hf

        variants = tuple(v for v in getattr(args, "hf_variants", "eager,static_compiled").split(",") if v)
        hf_results = run_hf(load_path, dtype, device, ran, gen_len, reps, args.seed, vocab, log, variants)

    result = {
        "schema_version": SCHEMA_VERSION,
        "date": today(),
        "command": command_line(argv),
        "environment": env,
        "model": {"name": args.model, "path": str(model_path), "load_format": args.load_format,
                  "weights": weights_source(args.load_format, load_format), **shape.as_dict()},
        "settings": settings,
        "engine": engine_info,
        "ceilings": ceiling,
        "results": [
            config_result(b, p, gen_len, ember_results[(b, p)], hf_results.get((b, p)) if hf_results else None,
                          shape, ceiling)
            for b, p in configs
        ],
        "profile": profile,
    }
    out_dir = args.out or default_out_dir(env["gpu_name"], args.model)
    paths = report.write_all(result, out_dir)
    report.print_summary(result)
    log("wrote " + ", ".join(str(p) for p in paths))
    return result
