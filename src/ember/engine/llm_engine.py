"""The engine: loads a model folder, owns the KV cache, and advances requests step by step.

``step()`` runs one scheduled forward pass and returns, per sequence that got a new token,
the token and the text it made visible (a sequence still prefilling its prompt gets none).
Stopping (EOS, stop tokens, stop strings, max_tokens, context length) is decided here, once
per token, on the host.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ember.config import GenerationDefaults, ModelConfig, parse_dtype
from ember.engine.block_manager import BlockManager
from ember.engine.kv_cache import allocate_kv_cache, num_kv_blocks
from ember.engine.model_runner import ModelRunner
from ember.engine.scheduler import Scheduler
from ember.engine.sequence import Sequence
from ember.errors import ContextLengthError, EmberError, InvalidRequestError
from ember.layers.attention import MIXED_STEP_DECODE_KERNEL_MIN_ROWS
from ember.loader.model_path import resolve_model_path
from ember.loader.weights import build_model, init_dummy_weights, load_checkpoint_weights
from ember.sampling_params import SamplingParams
from ember.tokenizer import IncrementalDetokenizer, Tokenizer

_warned_cpu = False


def pick_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto": the first CUDA GPU, else the CPU path (said once on stderr)."""
    global _warned_cpu
    if device is None or str(device) == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EmberError(f"device {device} was asked for, but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EmberError(f"device {device} does not exist ({torch.cuda.device_count()} CUDA GPU(s) visible)")
    elif device.type == "cpu" and not _warned_cpu:
        _warned_cpu = True
        print("ember: no CUDA GPU in use; running on the CPU path (slow)", file=sys.stderr)
    return device


@dataclass
class EngineArgs:
    model: str
    dtype: str = "auto"
    device: str | None = None
    load_format: str = "auto"  # "auto" (the checkpoint) or "dummy" (random weights)
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # new tokens per step; None: 8192 on CUDA, 2048 on CPU
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    seed: int = 0
    progress: bool = True
    enforce_eager: bool = False  # no CUDA graphs: every decode step launches its kernels one by one
    async_scheduling: bool = True  # prepare and launch step n+1 before reading step n's tokens
    # Fold each layer's RMSNorm weights into the projection after it (Qwen3ForCausalLM.fold_norms):
    # decode then runs the norms in the projections' epilogues. Off: HF's roundings step by step.
    fold_norms: bool = True


@dataclass
class StepOutput:
    seq: Sequence
    token_id: int
    text: str  # newly visible text (may be "" while a multi-byte char or stop string is pending)
    finished: bool
    num_output_tokens: int  # generated tokens so far, this one included


class LLMEngine:
    def __init__(self, args: EngineArgs):
        if args.load_format not in ("auto", "dummy"):
            raise InvalidRequestError(f"load_format must be 'auto' or 'dummy', got {args.load_format!r}")
        self.args = args
        self.path: Path = resolve_model_path(args.model)
        self.config = ModelConfig.from_folder(self.path)
        self.generation_defaults = GenerationDefaults.from_folder(self.path)
        self.tokenizer = Tokenizer.from_pretrained(self.path)
        self.device = pick_device(args.device)
        self.dtype = parse_dtype(args.dtype, default=self.config.torch_dtype)
        self.eos_token_ids = set(self.generation_defaults.eos_token_ids) | set(self.config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(self.tokenizer.eos_token_id)

        self.model = build_model(self.config, self.dtype, self.device)
        if args.load_format == "dummy":
            init_dummy_weights(self.model, seed=args.seed)
        else:
            load_checkpoint_weights(self.model, self.path, progress=args.progress)
        if args.fold_norms:  # the decode projections then run the norms in their epilogues
            self.model.fold_norms()

        max_len = self.config.max_position_embeddings
        if args.max_model_len:
            if args.max_model_len > max_len:
                raise InvalidRequestError(
                    f"context size {args.max_model_len} exceeds the model's maximum of {max_len} tokens"
                )
            max_len = args.max_model_len
        budget = args.max_num_batched_tokens
        if budget is None:  # large enough to keep the GPU busy, small enough not to stall decodes
            budget = max(8192 if self.device.type == "cuda" else 2048, args.block_size)
        if budget < 1:
            raise InvalidRequestError(f"max_num_batched_tokens must be >= 1, got {budget}")
        self.max_num_batched_tokens = budget
        num_blocks = num_kv_blocks(
            self.config, self.device, self.dtype, args.block_size, max_len, args.max_num_seqs,
            budget, args.gpu_memory_utilization,
        )
        if num_blocks < 1:
            raise EmberError("not enough device memory left for the KV cache after loading the model")
        self.max_model_len = min(max_len, num_blocks * args.block_size)
        k_caches, v_caches = allocate_kv_cache(
            self.config, num_blocks, args.block_size, self.dtype,
            [layer.input_layernorm.weight.device for layer in self.model.model.layers],
        )
        self.model.bind_kv_cache(k_caches, v_caches)
        self.block_manager = BlockManager(num_blocks, args.block_size, args.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, args.max_num_seqs, budget)
        self.runner = ModelRunner(
            self.model, self.config, self.block_manager, args.max_num_seqs, self.max_model_len, self.device,
            enforce_eager=args.enforce_eager,
        )
        self.detokenizers: dict[int, IncrementalDetokenizer] = {}
        self._inflight = None  # the launched step whose tokens the host has not read yet
        self._last_batch = None  # what the last step scheduled (for diagnostics)
        self.rng = random.Random(args.seed)
        if self.device.type == "cuda":
            self.warm_up()

    def warm_up(self) -> None:
        """Run a few tiny requests so that Triton compiles (or loads from its cache) the kernel
        variants real traffic hits first: prefill and decode, greedy and sampled, odd and
        even sizes. Without it the first requests (and any benchmark) pay seconds of JIT.
        Leaves no trace: no blocks, no prefix-cache entries, no counters, no RNG draws."""
        vocab = min(self.config.vocab_size, self.tokenizer.vocab_size)
        kinds = [SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True, seed=0),
                 SamplingParams(temperature=0.7, max_tokens=3, ignore_eos=True, seed=0),
                 SamplingParams(temperature=0.7, top_k=20, top_p=0.9, max_tokens=3, ignore_eos=True, seed=0)]
        preemptions = self.scheduler.num_preemptions
        for n in (1, 2, 3, 5, 16):
            self._warm_up_batch([kinds[i % 3] for i in range(n)], vocab)
        # Rows leaving a running batch, which the runs above never do: the next decode step gathers
        # the survivors' pending tokens into their new rows. CUDA loads a kernel's module at its
        # first launch (lazy loading, its default), and in the offline benchmark the first step
        # after the first sequence finished took 30 ms (255 rows) and the first at 16 rows 54 ms,
        # against 3-7; with CUDA_MODULE_LOADING=EAGER neither stood out (H200, session 10). Which
        # kernels load there is not pinned down (torch's index_select has a separate kernel for
        # <= 16 indices), so rows leave here once with more than 16 survivors, once with at most 16.
        n = min(40, self.args.max_num_seqs)
        waves = [2 if i < n - 32 else 3 if i < max(n - 16, n // 2) else 4 for i in range(n)]
        self._warm_up_batch([replace(kinds[i % 3], max_tokens=t) for i, t in enumerate(waves)], vocab)
        # A prompt arriving while enough rows decode that the mixed step sends them through the
        # decode kernel (its one-split variant: not one a decode graph uses).
        rows = MIXED_STEP_DECODE_KERNEL_MIN_ROWS
        if self.args.max_num_seqs > rows and self.scheduler.max_num_batched_tokens > rows + 8:
            self._warm_up_batch([replace(kinds[0], max_tokens=4)] * rows, vocab, late=[kinds[1]])
        self.block_manager.reset_prefix_cache()
        self.scheduler.num_preemptions = preemptions

    def _warm_up_batch(self, params: list[SamplingParams], vocab: int, late: list[SamplingParams] = ()) -> None:
        """Run one request per entry of ``params`` (then of ``late``, added after the first step) to
        the end (prompts of 1, 8, 15, ... tokens), then drop every trace of them."""
        def add(i, p, salt=0):
            return self.add_request([(97 * i + 13 * j + salt) % (vocab - 1) + 1
                                     for j in range(max(1, min(1 + 7 * i, self.max_model_len - 4)))], p)

        seqs = [add(i, p) for i, p in enumerate(params)]
        self.step()
        # Prompts of several tokens that no earlier warm-up prompt shares a prefix with: a prompt
        # with one token left to compute would make a pure decode batch with the rest.
        seqs += [add(len(params) + i, p, salt=1) for i, p in enumerate(late)]
        while self.has_unfinished():
            self.step()
        for s in seqs:
            self.abort(s)

    # ----- requests --------------------------------------------------------------------------
    def add_request(self, prompt_token_ids: list[int], params: SamplingParams, request_id=None,
                    stream_text: bool = True) -> Sequence:
        """Queue a request. With ``stream_text=False`` (and no stop strings, which need it) its
        text is decoded once when it finishes instead of token by token: step outputs then
        carry "" until the last one, which carries the whole text."""
        if not prompt_token_ids:
            raise InvalidRequestError("the prompt is empty")
        vocab = self.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})")
        if len(prompt_token_ids) >= self.max_model_len:
            raise ContextLengthError(
                f"the prompt has {len(prompt_token_ids)} tokens but the context holds {self.max_model_len} "
                "(prompt plus at least one generated token); shorten it or raise --ctx-size"
            )
        seed = params.seed if params.seed is not None else self.rng.getrandbits(62)
        seq = Sequence(prompt_token_ids, params, seed=seed, request_id=request_id)
        seq.length_limit = self.max_model_len
        if params.max_tokens is not None:
            seq.length_limit = min(seq.length_limit, len(prompt_token_ids) + params.max_tokens)
        self.detokenizers[seq.seq_id] = IncrementalDetokenizer(
            self.tokenizer, prompt_token_ids, skip_special_tokens=params.skip_special_tokens,
            stop=params.stop, include_stop_str_in_output=params.include_stop_str_in_output,
        )
        seq.text_at_end = not stream_text and not self.detokenizers[seq.seq_id].has_stop_strings
        self.scheduler.add(seq)
        return seq

    def abort(self, seq: Sequence) -> None:
        """Stop a request now and free its KV blocks."""
        if not seq.is_finished:
            seq.finish_reason = seq.finish_reason or "abort"
            self.scheduler.finish(seq)
        seq.drop_pending()
        self.detokenizers.pop(seq.seq_id, None)

    def has_unfinished(self) -> bool:
        """Requests are queued or running, or a launched step's tokens are still to be read."""
        inflight = self._inflight
        return self.scheduler.has_unfinished() or (
            inflight is not None and not all(s.is_finished for s in inflight.seqs)
        )

    def output_text(self, seq: Sequence) -> str:
        detok = self.detokenizers.get(seq.seq_id)
        return detok.text if detok is not None else ""

    # ----- stepping --------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Launch the next forward pass, then hand out the tokens of the previous one.

        With async scheduling the host reads step n's tokens, checks stops and detokenizes
        while the device runs step n+1, whose inputs it took from step n's tokens on the
        device. Each sequence therefore has up to one token in flight: a sequence that stops
        on EOS or a stop string has one wasted row in the step after. Steps whose sampling
        needs every earlier token on the host (penalties) run synchronously.
        """
        outputs: list[StepOutput] = []
        inflight, self._inflight = self._inflight, None
        if inflight is not None and any(p.needs_penalties for p in (s.params for s in inflight.seqs)):
            outputs += self._process(inflight)
            inflight = None
        batch = self._last_batch = self.scheduler.schedule()
        launched = None
        if batch.seqs:
            launched = self.runner.run(batch)
            self.scheduler.mark_computed(batch)
            for seq in batch.sampling_seqs:
                seq.append_pending()
        if inflight is not None:
            outputs += self._process(inflight)
        if launched is not None and not self.args.async_scheduling:
            outputs += self._process(launched)
            launched = None
        self._inflight = launched
        return outputs

    def _process(self, sampled) -> list[StepOutput]:
        """Wait for a launched step's tokens; append them, check stops, detokenize."""
        tokens, logprobs = sampled.wait()
        outputs = []
        for seq, token, lp in zip(sampled.seqs, tokens, logprobs):
            if seq.is_finished:  # aborted, or stopped while this token was in flight
                continue
            pos = seq.resolve_pending(token)
            if lp is not None:
                seq.logprobs.append(lp)
            self.block_manager.register_full_blocks(seq)  # a block may end at this token
            text, finished = self._check_stop(seq, token, pos + 1)
            if finished:
                seq.drop_pending()
                self.scheduler.finish(seq)
            outputs.append(StepOutput(seq, token, text, finished, pos + 1 - seq.num_prompt_tokens))
        return outputs

    def _check_stop(self, seq: Sequence, token: int, length: int) -> tuple[str, bool]:
        """Whether ``token``, the sequence's token number ``length`` (prompt included), ends it."""
        p = seq.params
        detok = self.detokenizers[seq.seq_id]
        num_output = length - seq.num_prompt_tokens
        may_stop = num_output > p.min_tokens  # EOS/stop tokens only count past min_tokens

        def final_text(upto: int) -> str:  # everything not emitted yet, up to token ``upto``
            if seq.text_at_end:
                return detok.add_final(seq.token_ids[seq.num_prompt_tokens : upto])
            return detok.flush()

        if may_stop and token in p.stop_token_ids:
            seq.finish_reason, seq.stop_reason = "stop", token
            return final_text(length - 1), True  # the stop token itself is not text
        if may_stop and not p.ignore_eos and token in self.eos_token_ids:
            seq.finish_reason = "stop"
            return final_text(length - 1), True
        if seq.text_at_end:
            if length >= seq.length_limit:
                seq.finish_reason = "length"
                return final_text(length), True
            return "", False
        text = detok.add(token)
        if detok.stopped:
            seq.finish_reason, seq.stop_reason = "stop", detok.stop_reason
            return text, True
        if length >= seq.length_limit:
            seq.finish_reason = "length"
            return text + detok.flush(), True
        return text, False

    # ----- scoring -------------------------------------------------------------------------------
    def prompt_logits(self, prompts: list[list[int]]) -> list[torch.Tensor]:
        """fp32 logits at every position of each prompt, run as one prefill batch (for
        exactness checks against a reference implementation)."""
        seqs = [Sequence(p, SamplingParams(max_tokens=1), seed=0) for p in prompts]
        try:
            for s in seqs:
                # Every position is computed, so no prefix-cache reuse (and nothing registered).
                if len(s) > self.max_model_len or not self.block_manager.can_allocate(s, use_prefix_cache=False):
                    raise ContextLengthError(f"a prompt of {len(s)} tokens does not fit the KV cache")
                self.block_manager.allocate(s, use_prefix_cache=False)
            logits = self.runner.prompt_logits(seqs)
        finally:
            for s in seqs:
                self.block_manager.free(s)
        return list(logits.split([len(p) for p in prompts]))

    # ----- observability -----------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counters and gauges for /metrics and logs (prefix-cache counters are in prompt tokens:
        looked up at admission, and found cached)."""
        bm, sched = self.block_manager, self.scheduler
        return {
            "num_running": len(sched.running),
            "num_waiting": len(sched.waiting),
            "kv_blocks_total": bm.num_blocks,
            "kv_blocks_used": bm.num_blocks - bm.num_free_blocks,
            "num_preemptions": sched.num_preemptions,
            "prefix_cache_queries": getattr(bm, "prefix_cache_queries", 0),
            "prefix_cache_hits": getattr(bm, "prefix_cache_hits", 0),
        }
