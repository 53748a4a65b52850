"""Turns scheduled sequences into one forward pass plus sampling on the device.

The runner orchestrates; the parts live beside it:

- ``step_inputs``: token ids, positions, slots, context lengths and block tables on the
  device. Decode inputs go through preallocated buffers, filled by a kernel that reads the
  pinned staging (token ids stay where the last step's sampler wrote them when the rows are
  unchanged), and the step itself never waits on the device.
- ``host_staging``: the pinned, double-buffered host memory those copies read from, and where
  the tokens come back (copied, or written there by a decode graph's argmax).
- ``cuda_graphs``: on CUDA a pure decode step replays a CUDA graph: one per batch-size bucket,
  captured at start-up over the model forward and its logits (the LM head writing into a fixed
  buffer, in the model dtype: the sampler upcasts on read) and, for small buckets, the greedy
  argmax; a batch runs padded to the
  smallest bucket that holds it (``enforce_eager`` turns this off).
- ``sampler`` (and ``sampler_inputs``, its per-row parameters): penalties, sampling, logprobs.

A step with any prompt chunk runs the whole batch through the prefill path, its decode rows (one
query over their cached context) attended by the decode kernel; the LM head runs only on rows
that yield a token.
"""

from __future__ import annotations

import torch

from ember.config import ModelConfig
from ember.engine.block_manager import BlockManager
from ember.engine.cuda_graphs import DecodeGraphs, pick_bucket
from ember.engine.host_staging import HostStaging
from ember.engine.sampler import SampledStep, Sampler
from ember.engine.sampler_inputs import packed_bytes
from ember.engine.scheduler import ScheduledBatch
from ember.engine.sequence import Sequence
from ember.engine.step_inputs import PendingTokens, StepInputs


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        cfg: ModelConfig,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_model_len: int,
        device: torch.device,
        enforce_eager: bool = False,
    ):
        """Call with the model's KV cache bound: on CUDA, unless ``enforce_eager``, this
        captures the decode graphs."""
        self.model = model
        self.cfg = cfg
        self.block_manager = block_manager
        self.block_size = block_manager.block_size
        self.device = device
        self.max_blocks_per_seq = -(-max_model_len // self.block_size)
        pin = device.type == "cuda"
        self.staging = HostStaging(max_num_seqs, self.max_blocks_per_seq, packed_bytes(max_num_seqs), pin)
        # Written by the sampler, read by the next step's inputs (async scheduling).
        self.pending = PendingTokens()
        self.inputs = StepInputs(max_num_seqs, self.max_blocks_per_seq, self.block_size, device, self.staging,
                                 self.pending)
        # The sampler writes each step's tokens where the next decode step reads its input ids.
        self.sampler = Sampler(device, max_num_seqs, self.staging, self.pending, self.inputs.decode_input_ids)
        self.cuda_graphs = DecodeGraphs(model, cfg, self.inputs, self.block_size, self.max_blocks_per_seq, device)
        if device.type == "cuda" and not enforce_eager:
            self.cuda_graphs.capture(max_num_seqs)

    # ----- decode: eager, padded to a bucket, or a captured graph ---------------------------
    def _run_decode_padded(self, seqs: list[Sequence], bucket: int) -> tuple[torch.Tensor, bool]:
        """Logits [len(seqs), vocab] (model dtype) of a decode batch run as ``bucket`` rows: by replaying
        the bucket's graph, or eagerly when it has none. Padding rows' logits are dropped. Also
        whether the graph already wrote the greedy tokens."""
        self.inputs.prepare_decode(seqs, num_rows=bucket)
        return self.cuda_graphs.run_bucket(bucket, len(seqs), max(map(len, seqs)))

    def decode_logits(self, seqs: list[Sequence]) -> tuple[torch.Tensor, bool]:
        """Logits [len(seqs), vocab] (model dtype) for one decode token per sequence, and whether
        their argmax is already in the decode token buffer."""
        bucket = pick_bucket(self.cuda_graphs.buckets, len(seqs))
        if bucket is not None:
            return self._run_decode_padded(seqs, bucket)
        self.inputs.prepare_decode(seqs)  # no buckets (CPU, enforce_eager) or past the largest one
        graphs = self.cuda_graphs
        return graphs.forward(len(seqs), graphs.num_splits(len(seqs), max(map(len, seqs)))), False

    # ----- one step --------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> SampledStep | None:
        """Launch one forward pass over ``batch`` and the sampling of ``batch.sampling_seqs``;
        returns without waiting for the device (None when no row samples a token).

        Does not advance ``num_cached_tokens``: the scheduler does that after the launch.
        """
        self.staging.flip()
        argmax_done = False
        if batch.is_pure_decode:
            seqs = batch.seqs
            logits, argmax_done = self.decode_logits(seqs)
        else:  # prompt chunks, possibly mixed with decode rows (q_len 1 over their context)
            seqs = batch.sampling_seqs
            input_ids, positions, meta, last_rows = self.inputs.prepare_prefill(batch.seqs, batch.num_new_tokens)
            hidden = self.model(input_ids, positions, meta)
            if not seqs:  # only partial prompt chunks: no logits needed
                return None
            rows = [r for r, p in zip(last_rows, batch.produces_token) if p]
            hidden = hidden[self.inputs.to_device(rows, torch.int64)]
            logits = self.model.compute_logits(hidden)
        return self.sampler.sample(seqs, logits, argmax_done)

    @torch.inference_mode()
    def prompt_logits(self, seqs: list[Sequence]) -> torch.Tensor:
        """Logits at every prompt position (for exactness tests); fills the cache like a prefill."""
        input_ids, positions, meta, _ = self.inputs.prepare_prefill(
            seqs, [len(s) - s.num_cached_tokens for s in seqs])
        logits = self.model.compute_logits(self.model(input_ids, positions, meta)).float()
        for s in seqs:
            s.num_cached_tokens = len(s)
        return logits
