"""CUDA graphs of the decode step, one per batch-size bucket.

Launching a decode step's kernels one by one costs more host time than small batches take on
the device, so on CUDA each bucket's decode forward, the LM head writing straight into a fixed
logits buffer, is captured once at start-up and replayed. A batch runs padded to the smallest
bucket that holds it; the graphs read their inputs from the fixed decode buffers of
``StepInputs``.

Small buckets get a graph per decode-attention split count: the splits are fitted to the batch's
longest context (``ops.decode_attention.decode_num_splits``), since at batch 1 the 56-62 empty
split programs of a short context under the capacity's 64 splits cost 14-44 us per step, and
the host, which knows the lengths, picks the graph.

Graphs of small buckets also take the greedy argmax into the decode token buffer, where the
sampler keeps it for greedy rows and the next step reads it, and into the pinned host staging,
where the host reads it: at batch 1 every operation left outside the graph costs a few
microseconds of device time (~1% of a Qwen3-0.6B token). Larger
buckets leave it to the sampler, since a sampled batch would pay for an unused argmax.
"""

from __future__ import annotations

import bisect

import torch

from ember.config import ModelConfig
from ember.engine.step_inputs import StepInputs
from ember.layers.attention import AttentionMetadata
from ember.ops.argmax import argmax_rows
from ember.ops.decode_attention import decode_num_splits, decode_split_counts, decode_workspace_numel

# Decode batch sizes that get a CUDA graph: the small ones close together, then steps of 16.
_SMALL_BUCKETS = (1, 2, 4, 8, 16, 24, 32)
_BUCKET_STEP = 16
# Graphs of up to this many rows include the greedy argmax.
MAX_ARGMAX_IN_GRAPH = 32
# Larger decode batches run eagerly: each graph holds memory, and at this size the launch
# overhead is a small share of the step.
MAX_GRAPH_BATCH = 512


def decode_graph_buckets(max_num_seqs: int) -> list[int]:
    """Ascending batch sizes to capture: 1, 2, 4, 8, 16, 24, 32, 48, 64, ... up to
    ``max_num_seqs`` (itself a bucket, so every decode batch has one up to MAX_GRAPH_BATCH)."""
    cap = min(max_num_seqs, MAX_GRAPH_BATCH)
    sizes = [*_SMALL_BUCKETS, *range(_SMALL_BUCKETS[-1] + _BUCKET_STEP, cap, _BUCKET_STEP)]
    return [b for b in sizes if b < cap] + [cap]


def pick_bucket(buckets: list[int], batch_size: int) -> int | None:
    """The smallest of the ascending ``buckets`` that holds ``batch_size``; None if none does."""
    i = bisect.bisect_left(buckets, batch_size)
    return buckets[i] if i < len(buckets) else None


class DecodeGraphs:
    """The decode forward over the decode buffers, eager or through a captured graph."""

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, inputs: StepInputs, block_size: int,
                 max_blocks_per_seq: int, device: torch.device):
        self.model = model
        self.cfg = cfg
        self.inputs = inputs
        self.block_size = block_size
        self.max_blocks_per_seq = max_blocks_per_seq
        self.device = device
        # Decode steps of up to buckets[-1] sequences run padded to a bucket: through its
        # graph in graphs, else eagerly. Both stay empty until capture() (so on CPU, and with
        # enforce_eager).
        self.buckets: list[int] = []
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # by (bucket, attention splits)
        self.split_counts: dict[int, list[int]] = {}  # each bucket's decode attention split counts
        self.workspace: torch.Tensor | None = None  # decode attention scratch, all buckets
        self.counters: torch.Tensor | None = None  # its zeroed int32 arrival counters, all buckets
        self.logits: torch.Tensor | None = None  # [largest bucket, vocab], model dtype: graphs' output
        self.argmax_buckets: set[int] = set()  # graphs that also write the greedy tokens

    def num_splits(self, num_rows: int, longest_context: int) -> int:
        """The decode attention's split count for ``num_rows`` rows whose longest context is given."""
        return decode_num_splits(num_rows, self.cfg.num_key_value_heads, self.max_blocks_per_seq, self.block_size,
                                 longest_context)

    def graph_for(self, bucket: int, longest_context: int) -> torch.cuda.CUDAGraph | None:
        """The captured graph a batch of ``bucket`` rows replays (None: it runs eagerly)."""
        return self.graphs.get((bucket, self.num_splits(bucket, longest_context)))

    @property
    def captured_buckets(self) -> list[int]:
        return sorted({bucket for bucket, _ in self.graphs})

    def forward(self, num_rows: int, num_splits: int, out: torch.Tensor | None = None,
                argmax: bool = False) -> torch.Tensor:
        """Logits (model dtype) of the first ``num_rows`` rows of the decode buffers, into ``out``
        if given: the body of a decode graph. Buckets use the preallocated attention workspace.
        ``argmax``: also write each row's argmax over the logits into the decode token buffer."""
        inputs = self.inputs
        scratch = num_rows in self.split_counts  # a bucket: the shared workspace holds its splits
        meta = AttentionMetadata(
            is_prefill=False,
            slot_mapping=inputs.decode_slots[:num_rows],
            context_lens=inputs.decode_context_lens[:num_rows],
            block_tables=inputs.decode_block_tables[:num_rows],
            decode_workspace=self.workspace if scratch else None,
            decode_counters=self.counters if scratch else None,
            decode_num_splits=num_splits,
        )
        hidden = self.model(inputs.decode_input_ids[:num_rows], inputs.decode_positions[:num_rows], meta)
        logits = self.model.compute_logits(hidden, out=out)
        if argmax:  # after the model has read the ids: the buffer holds the next step's tokens
            assert num_rows <= inputs.staging.current.tokens.numel(), "host token row too short"
            # ... and the host's copy of them: the kernel writes the staging set's pinned row that
            # the step's inputs name, so no device-to-host copy follows the graph.
            argmax_rows(logits, out=inputs.decode_input_ids[:num_rows],
                        host_out=(inputs.staging.tokens_both, inputs.decode.token_offset))
        return logits

    def run_bucket(self, bucket: int, num_seqs: int, longest_context: int) -> tuple[torch.Tensor, bool]:
        """Logits [num_seqs, vocab] (model dtype) of a decode batch filled in as ``bucket`` rows:
        by replaying the bucket's graph for its split count, or eagerly when it has none. Padding
        rows are dropped. Also whether the greedy argmax is already in the decode token buffer."""
        num_splits = self.num_splits(bucket, longest_context)
        graph = self.graphs.get((bucket, num_splits))
        if graph is None:
            return self.forward(bucket, num_splits)[:num_seqs], False
        graph.replay()
        return self.logits[:num_seqs], bucket in self.argmax_buckets

    @torch.inference_mode()
    def capture(self, max_num_seqs: int) -> None:
        """Capture one CUDA graph per bucket of ``decode_graph_buckets(max_num_seqs)``.

        Each covers the decode forward, its LM head writing into ``logits`` (and, up to
        MAX_ARGMAX_IN_GRAPH rows, the greedy argmax into the decode token buffer); a bucket gets
        one graph per attention split count it can run with (``decode_split_counts``), all
        sharing one preallocated workspace, so a replay allocates nothing. Graphs share one memory
        pool, largest captured first so the smaller ones fit in what it already holds (replays
        never overlap).
        """
        if len({p.device for p in self.model.parameters()}) > 1:
            return  # layers on several GPUs: one graph cannot follow them yet, so stay eager
        cfg = self.cfg
        buckets = decode_graph_buckets(max_num_seqs)
        self.split_counts = {
            b: decode_split_counts(b, cfg.num_key_value_heads, self.max_blocks_per_seq, self.block_size)
            for b in buckets
        }
        numel = max(
            decode_workspace_numel(b, cfg.num_attention_heads, cfg.head_dim, max(self.split_counts[b]))
            for b in buckets
        )
        self.workspace = torch.empty(numel, dtype=torch.float32, device=self.device)
        self.counters = torch.zeros(buckets[-1] * cfg.num_key_value_heads,  # decode_counters_numel
                                    dtype=torch.int32, device=self.device)
        # The model's dtype: the sampler upcasts as it reads (an fp32 copy here cost 4 us per step
        # at batch 1 and ~115 us at 256 rows of Qwen3's 152k vocabulary on an H200).
        self.logits = torch.empty(buckets[-1], cfg.vocab_size, dtype=self.model.logits_dtype, device=self.device)
        # Capture on all-padding inputs: nothing is written to the KV cache.
        inputs = self.inputs
        for buffer, value in ((inputs.decode_input_ids, 0), (inputs.decode_positions, 0), (inputs.decode_slots, -1),
                              (inputs.decode_context_lens, 0), (inputs.decode_block_tables, 0)):
            buffer.fill_(value)
        pool = torch.cuda.graph_pool_handle()
        with torch.cuda.device(self.device):
            for b in reversed(buckets):
                argmax = b <= MAX_ARGMAX_IN_GRAPH
                for num_splits in reversed(self.split_counts[b]):
                    # Warm-up outside the capture: Triton compiles this bucket's kernels, cuBLAS
                    # sets up its handle and workspace.
                    self.forward(b, num_splits, out=self.logits[:b], argmax=argmax)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        self.forward(b, num_splits, out=self.logits[:b], argmax=argmax)
                    self.graphs[b, num_splits] = graph
                if argmax:
                    self.argmax_buckets.add(b)
            torch.cuda.synchronize()
        self.buckets = buckets
