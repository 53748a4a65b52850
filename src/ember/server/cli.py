"""``ember serve MODEL [flags]``: load the model, then serve the OpenAI API with uvicorn.

uvicorn handles SIGINT/SIGTERM: it stops accepting, gives open requests a few seconds, then the
app's lifespan stops the engine thread.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ember.errors import EmberError
from ember.server.api_server import DEFAULT_MAX_BODY_BYTES, build_app

GRACEFUL_SHUTDOWN_S = 5


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ember serve", description="Serve a Qwen3 model over the OpenAI HTTP API.")
    p.add_argument("model", help="local Hugging Face folder or hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, local only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument("--served-model-name", default=None, help="the model id clients use (default: MODEL)")
    p.add_argument("--max-num-seqs", type=int, default=256, help="sequences in one running batch")
    p.add_argument("--max-queue", type=int, default=1024, help="sequences that may wait beyond the batch; more get 503")
    p.add_argument("--max-model-len", type=int, default=None, help="context size in tokens (default: the model's)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--device", default=None, help="cuda:N or cpu (default: the first GPU, else cpu)")
    p.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="tokens per step: decodes first, then prefill chunks (default: 8192 on GPU, 2048 on CPU)")
    p.add_argument("--no-prefix-caching", dest="prefix_caching", action="store_false",
                   help="recompute shared prompt prefixes instead of reusing their KV blocks")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs for decode")
    p.add_argument("--no-async-scheduling", dest="async_scheduling", action="store_false",
                   help="read each step's tokens before launching the next (slower; for comparison)")
    p.add_argument("--no-fold-norms", dest="fold_norms", action="store_false",
                   help="bf16/fp16 rounded as HF rounds at each RMSNorm (slower decode; see README)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger bodies get 413")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    for flag, value in (("--max-num-seqs", args.max_num_seqs), ("--max-body-bytes", args.max_body_bytes)):
        if value < 1:
            print(f"ember serve: error: {flag} must be >= 1", file=sys.stderr)
            return 2
    if args.max_queue < 0:
        print("ember serve: error: --max-queue must be >= 0", file=sys.stderr)
        return 2
    import uvicorn

    from ember.entrypoints.llm import LLM

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        llm = LLM(args.model, dtype=args.dtype, device=args.device, load_format=args.load_format,
                  max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                  gpu_memory_utilization=args.gpu_memory_utilization, progress=sys.stderr.isatty(),
                  max_num_batched_tokens=args.max_num_batched_tokens, enable_prefix_caching=args.prefix_caching,
                  enforce_eager=args.enforce_eager, async_scheduling=args.async_scheduling,
                  fold_norms=args.fold_norms)
    except EmberError as exc:
        print(f"ember serve: error: {exc}", file=sys.stderr)
        return 1
    app = build_app(llm, args.served_model_name or args.model, api_key=args.api_key,
                    max_num_seqs=args.max_num_seqs, max_queue=args.max_queue, max_body_bytes=args.max_body_bytes)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
