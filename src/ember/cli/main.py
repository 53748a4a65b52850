"""``ember``: generate from a prompt, chat interactively (-i), or run a subcommand.

Errors that are the input's fault print one line and exit 1; ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import time

from ember.errors import EmberError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ember",
        description="Run Qwen3 models: stream a completion of -p, or chat with -i.",
    )
    p.add_argument("-m", "--model", required=True, help="local Hugging Face folder or hub id (Qwen/Qwen3-0.6B)")
    p.add_argument("-p", "--prompt", default="Hello, my name is", help="prompt (default: %(default)r)")
    p.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate (default: %(default)s)")
    p.add_argument("-c", "--ctx-size", type=int, default=0, help="context size in tokens (default: the model's)")
    p.add_argument("--temp", type=float, default=None, help="temperature, 0 = greedy (default: generation_config, else 0.7)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: generation_config, else 0.9)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling, 0 = off (default: generation_config, else 40)")
    p.add_argument("--min-p", type=float, default=None, help="min-p sampling (default: off)")
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--devices", default="0", help="GPU index to run on, or 'cpu' (default: %(default)s)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--load-format", default="auto", choices=["auto", "dummy"],
                   help="dummy = random weights of the checkpoint's shapes, for benchmarks")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--enforce-eager", action="store_true",
                   help="no CUDA graphs for decode (slower; for debugging and comparison)")
    p.add_argument("--no-async-scheduling", dest="async_scheduling", action="store_false",
                   help="read each step's tokens before launching the next (slower; for comparison)")
    p.add_argument("--no-fold-norms", dest="fold_norms", action="store_false",
                   help="bf16/fp16 rounded as HF rounds at each RMSNorm (slower decode; see README)")
    chat = p.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None,
                      help="apply the model's chat template to -p")
    chat.add_argument("--raw-prompt", dest="chat", action="store_false", help="send -p as is (default)")
    think = p.add_mutually_exclusive_group()
    think.add_argument("--think", dest="think", action="store_true", default=None, help="Qwen3 thinking mode on")
    think.add_argument("--no-think", dest="think", action="store_false", help="Qwen3 thinking mode off")
    p.add_argument("-i", "--interactive", action="store_true", help="multi-turn chat on the terminal")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks and loading details")
    return p


def device_from_flag(devices: str) -> str:
    import torch

    value = devices.strip().lower()
    if value in ("cpu", ""):
        return "cpu"
    parts = [d for d in value.split(",") if d]
    if len(parts) > 1:
        raise EmberError("several --devices (layer split) are not supported yet; give one GPU index")
    if not parts[0].isdigit():
        raise EmberError(f"--devices takes a GPU index or 'cpu', got {devices!r}")
    return f"cuda:{parts[0]}" if torch.cuda.is_available() else "cpu"


def sampling_params(llm, args):
    return llm.default_sampling_params(
        temperature=args.temp, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
        presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
        repetition_penalty=args.repetition_penalty, seed=args.seed, max_tokens=args.n_predict,
    )


def run_prompt(llm, args) -> None:
    params = sampling_params(llm, args)
    if args.chat:
        text = llm.tokenizer.apply_chat_template(
            [{"role": "user", "content": args.prompt}], enable_thinking=args.think
        )
        ids = llm.tokenizer.encode(text)
    else:
        ids = llm.tokenizer.encode(args.prompt)
    start = time.perf_counter()
    first = None
    generated = 0
    for out in llm.stream(ids, params):
        if first is None:
            first = time.perf_counter()
        generated += 1
        sys.stdout.write(out.text)
        sys.stdout.flush()
    end = time.perf_counter()
    sys.stdout.write("\n")
    sys.stdout.flush()
    ttft = (first or end) - start
    decode_time = end - (first or end)
    decode_rate = (generated - 1) / decode_time if generated > 1 and decode_time > 0 else 0.0
    print(
        f"prompt tokens: {len(ids)} | generated tokens: {generated} | time to first token: {ttft * 1000:.1f} ms"
        f" | prefill: {len(ids) / ttft if ttft > 0 else 0:.1f} tok/s | decode: {decode_rate:.1f} tok/s",
        file=sys.stderr,
    )


def run_guarded(prog: str, verbose: bool, body) -> int:
    """Run ``body()``; an EmberError becomes one ``prog: error:`` line and exit 1 (a traceback
    with ``verbose``), Ctrl-C exits 130."""
    try:
        body()
        return 0
    except EmberError as exc:
        if verbose:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":  # `ember bench ...` has its own flags
        from ember.bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "serve":  # `ember serve MODEL ...`: the HTTP server has its own flags
        from ember.server.cli import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)

    def body():
        if args.n_predict < 1:
            raise EmberError(f"-n/--n-predict must be >= 1, got {args.n_predict}")
        if args.ctx_size < 0:
            raise EmberError(f"-c/--ctx-size must be >= 0, got {args.ctx_size}")
        from ember.entrypoints.llm import LLM

        llm = LLM(
            args.model, dtype=args.dtype, device=device_from_flag(args.devices), load_format=args.load_format,
            max_model_len=args.ctx_size or None, gpu_memory_utilization=args.gpu_memory_utilization,
            max_num_seqs=1, progress=args.verbose or sys.stderr.isatty(), enforce_eager=args.enforce_eager,
            async_scheduling=args.async_scheduling, fold_norms=args.fold_norms,
        )
        if args.interactive:
            from ember.cli.chat import run_chat

            run_chat(llm, args)
        else:
            run_prompt(llm, args)

    return run_guarded("ember", args.verbose, body)

if __name__ == "__main__":
    sys.exit(main())
