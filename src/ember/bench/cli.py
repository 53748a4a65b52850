"""``ember bench``: argument parsing and the order of the run.

Ceilings first (an idle device), then Ember (load once, every configuration, optional profile),
then, with ``--compare hf``, HF transformers after Ember's memory is freed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ember.cli.main import run_guarded
from ember.errors import EmberError

# Named size presets; explicit flags override them. "small" is what CI runs.
PRESETS = {
    "default": dict(batch_sizes=[1, 8, 32], prompt_lens=[128, 2048, 8192], gen_len=256, reps=5),
    "small": dict(batch_sizes=[1, 2], prompt_lens=[16, 32], gen_len=8, reps=2),
}


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ember bench",
        description="Measure prefill and decode throughput against the device's measured ceilings.",
    )
    p.add_argument("-m", "--model", required=True, help="local Hugging Face folder or hub id")
    p.add_argument("--load-format", default="auto", choices=["auto", "dummy"],
                   help="dummy = random weights of the checkpoint's shapes")
    p.add_argument("--configs", default="default", choices=sorted(PRESETS),
                   help="size preset: default (1,8,32 x 128,2048,8192, 256 tokens, 5 reps) or small (CI)")
    p.add_argument("--batch-sizes", type=int_list, help="comma-separated, e.g. 1,8,32")
    p.add_argument("--prompt-lens", type=int_list, help="comma-separated, e.g. 128,2048,8192")
    p.add_argument("--gen-len", type=int, help="tokens generated per sequence (>= 2)")
    p.add_argument("--reps", type=int, help="timed repetitions after one warm-up")
    p.add_argument("--max-model-len", type=int,
                   help="the engine's context limit (default: the longest prompt + gen-len). A server runs "
                        "with the model's whole context, and at small batches the decode attention's split "
                        "count follows it, so set it to compare with serving")
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<date>-<gpu>-<model>/)")
    p.add_argument("--compare", choices=["hf"], help="also run HF transformers on the same weights")
    p.add_argument("--hf-variants", default="eager,static_compiled",
                   help="which HF runs --compare does (default: %(default)s)")
    p.add_argument("--profile", action="store_true", help="torch.profiler over one prefill and one decode step")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda:N (default: %(default)s)")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (when the engine has them)")
    p.add_argument("--no-async-scheduling", dest="async_scheduling", action="store_false",
                   help="read each step's tokens before launching the next (when the engine has it)")
    p.add_argument("--no-fold-norms", dest="fold_norms", action="store_false",
                   help="keep the RMSNorm weights out of the projections (when the engine has it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts and dummy weights")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    return p


def resolve_settings(args: argparse.Namespace) -> dict:
    preset = PRESETS[args.configs]
    settings = {
        "preset": args.configs,
        "batch_sizes": args.batch_sizes or preset["batch_sizes"],
        "prompt_lens": args.prompt_lens or preset["prompt_lens"],
        "gen_len": args.gen_len if args.gen_len is not None else preset["gen_len"],
        "reps": args.reps if args.reps is not None else preset["reps"],
        "warmup": 1,
        "seed": args.seed,
        "load_format": args.load_format,
        "dtype": args.dtype,
        "compare": args.compare,
        "profile": args.profile,
        "enforce_eager": args.enforce_eager,
        "async_scheduling": args.async_scheduling,
        "fold_norms": args.fold_norms,
        "max_model_len": args.max_model_len,  # None: the longest configuration's prompt + generation
    }
    if settings["gen_len"] < 2:
        raise EmberError("--gen-len must be >= 2 (one prefill token plus at least one decode step)")
    if settings["reps"] < 1:
        raise EmberError("--reps must be >= 1")
    if settings["max_model_len"] is not None and settings["max_model_len"] < 2:
        raise EmberError("--max-model-len must be >= 2")
    return settings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)

    def body():
        from ember.bench.run import run_bench

        with tempfile.TemporaryDirectory(prefix="ember-bench-") as scratch:
            run_bench(args, resolve_settings(args), argv, Path(scratch))

    return run_guarded("ember bench", args.verbose, body)

if __name__ == "__main__":
    sys.exit(main())
