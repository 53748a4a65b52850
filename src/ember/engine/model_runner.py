"""Turns scheduled sequences into one forward pass plus sampling on the device.

Decode inputs go through preallocated device buffers (token ids, positions, slots, context
lengths, block tables, sampling parameters) filled by one host-to-device copy each, and the
step itself never waits on the device. On CUDA a pure decode step replays a CUDA graph: one
per batch-size bucket, captured at start-up over the model forward and the fp32 logits; a
batch runs padded to the smallest bucket that holds it (``enforce_eager`` turns this off).
A step with any prompt chunk runs the whole batch, decode rows included (one query over their
cached context), through the prefill path; the LM head runs only on rows that yield a token.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch

from ember import ops
from ember.config import ModelConfig
from ember.engine.block_manager import BlockManager
from ember.engine.scheduler import ScheduledBatch
from ember.engine.sequence import Sequence, TokenLogprobs
from ember.layers.attention import AttentionMetadata
from ember.ops.attention import decode_num_splits, decode_workspace_numel
from ember.ops.sampling import compute_logprobs

# Decode batch sizes that get a CUDA graph: the small ones close together, then steps of 16.
_SMALL_BUCKETS = (1, 2, 4, 8, 16, 24, 32)
_BUCKET_STEP = 16
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


@dataclass
class SampledStep:
    """A launched step's sampled tokens, on their way to the host.

    ``host`` holds pinned copies of the tokens and, when any row asked for logprobs, of
    (chosen logprob, top ids, top logprobs); they are valid once ``ready`` has fired.
    """

    seqs: list[Sequence]
    host: list[torch.Tensor]
    ready: torch.cuda.Event | None
    want_logprobs: list[bool]

    def wait(self) -> tuple[list[int], list[TokenLogprobs | None]]:
        """Block until the device is done; the tokens and each row's logprobs (or None)."""
        if self.ready is not None:
            self.ready.synchronize()
        tokens = self.host[0].tolist()
        logprobs: list[TokenLogprobs | None] = [None] * len(tokens)
        if len(self.host) > 1:
            chosen, top_ids, top_lps = (t.tolist() for t in self.host[1:])
            for i, s in enumerate(self.seqs):
                if self.want_logprobs[i]:
                    k = s.params.logprobs
                    logprobs[i] = TokenLogprobs(tokens[i], chosen[i], dict(zip(top_ids[i][:k], top_lps[i][:k])))
        return tokens, logprobs


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
        self.pin = device.type == "cuda"
        n, dev = max_num_seqs, device
        # Decode-step buffers, reused every step (fixed addresses for graph capture).
        self.decode_input_ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.decode_positions = torch.zeros(n, dtype=torch.int64, device=dev)
        self.decode_slots = torch.zeros(n, dtype=torch.int64, device=dev)
        self.decode_context_lens = torch.zeros(n, dtype=torch.int32, device=dev)
        self.decode_block_tables = torch.zeros(n, self.max_blocks_per_seq, dtype=torch.int32, device=dev)
        # Decode steps of up to decode_buckets[-1] sequences run padded to a bucket: through
        # its graph in decode_graphs, else eagerly. Both stay empty on CPU and with enforce_eager.
        self.decode_buckets: list[int] = []
        self.decode_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.bucket_num_splits: dict[int, int] = {}  # decode attention splits at each bucket
        self.decode_workspace: torch.Tensor | None = None  # decode attention scratch, all buckets
        self.decode_counters: torch.Tensor | None = None  # its zeroed int32 arrival counters, all buckets
        self.graph_logits: torch.Tensor | None = None  # fp32 [largest bucket, vocab], graphs' output
        # The last launch's sampled tokens on the device, and each sequence's row in them: the
        # next step reads a token the host has not seen yet from here.
        self._prev_tokens: torch.Tensor | None = None
        self._prev_rows: dict[int, int] = {}
        # Host staging for decode inputs and sampled tokens, two sets used on alternate launches.
        # A set is refilled two launches later, when its copies are long done: the launch in
        # between waited for this one's tokens (recorded after its input copies) before going on.
        self._parity = 0
        self._staging = [
            {"rows": torch.zeros(4, n, dtype=torch.int64, pin_memory=self.pin),
             "tables": torch.zeros(n, self.max_blocks_per_seq, dtype=torch.int32, pin_memory=self.pin),
             "tokens": torch.zeros(n, dtype=torch.int64, pin_memory=self.pin),
             "ready": torch.cuda.Event() if self.pin else None}
            for _ in range(2)
        ]
        if device.type == "cuda" and not enforce_eager:
            self.capture_decode_graphs(max_num_seqs)

    # ----- input preparation ---------------------------------------------------------------
    def _to_device(self, data, dtype) -> torch.Tensor:
        t = torch.tensor(data, dtype=dtype, pin_memory=self.pin)
        return t.to(self.device, non_blocking=True)

    def _np_to_device(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(array)
        return (t.pin_memory() if self.pin else t).to(self.device, non_blocking=True)

    @staticmethod
    def _block_tables(seqs: list[Sequence]) -> np.ndarray:
        """int32 [len(seqs), widest table], zero-padded: every table's raw bytes joined in one
        go and scattered at once, so the host cost barely grows with the batch."""
        lens = np.fromiter(map(len, (s.block_table for s in seqs)), np.int64, len(seqs))
        flat = np.frombuffer(b"".join(s.block_table.tobytes() for s in seqs), np.int32)
        tables = np.zeros((len(seqs), int(lens.max())), np.int32)
        rows = np.repeat(np.arange(len(seqs)), lens)
        cols = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
        tables[rows, cols] = flat
        return tables

    def _pending_sources(self, seqs: list[Sequence], rows: list[int]) -> tuple[list[int], list[int]] | None:
        """For the sequences whose input token ``rows[i]`` is still a placeholder: that input
        row, and the row of the previous step's sampled tokens that holds its value."""
        dst, src = [], []
        for s, row in zip(seqs, rows):
            if s.num_pending:
                # Only the previous launch can still be pending when the next one is prepared.
                dst.append(row)
                src.append(self._prev_rows[s.seq_id])
        return (dst, src) if dst else None

    def _fill_pending(self, input_ids: torch.Tensor, sources) -> None:
        """Copy sampled tokens the host has not seen into ``input_ids``, on the device."""
        if sources is None:
            return
        dst, src = sources
        if dst == src == list(range(len(dst))):  # steady decode: same rows as the last step
            input_ids[: len(dst)].copy_(self._prev_tokens[: len(dst)])
            return
        dst, src = (self._to_device(x, torch.int64) for x in sources)
        input_ids.index_copy_(0, dst, self._prev_tokens.index_select(0, src))

    def prepare_prefill(self, seqs: list[Sequence], num_new_tokens: list[int]):
        """Flat inputs for the next ``num_new_tokens[i]`` uncached tokens of each sequence (a
        prompt chunk, or one decode token); queries attend to everything cached before them.
        Also returns each sequence's last row in the flat batch."""
        ids, positions, cu = [], [], [0]
        for s, n in zip(seqs, num_new_tokens):
            start, end = s.num_cached_tokens, s.num_cached_tokens + n
            ids.extend(s.token_ids[start:end])
            positions.extend(range(start, end))
            cu.append(cu[-1] + n)
        tables = self._block_tables(seqs)
        pos = np.asarray(positions, np.int64)
        seq_of_row = np.repeat(np.arange(len(seqs)), num_new_tokens)
        slots = tables[seq_of_row, pos // self.block_size].astype(np.int64) * self.block_size + pos % self.block_size
        meta = AttentionMetadata(
            is_prefill=True,
            slot_mapping=self._np_to_device(slots),
            context_lens=self._to_device([s.num_cached_tokens + n for s, n in zip(seqs, num_new_tokens)], torch.int32),
            block_tables=self._np_to_device(tables),
            cu_seqlens_q=self._to_device(cu, torch.int32),
            max_seqlen_q=max(num_new_tokens),
        )
        last_rows = [c - 1 for c in cu[1:]]
        input_ids = self._to_device(ids, torch.int64)
        # A placeholder can only be a sequence's last token, i.e. the last row of its chunk.
        self._fill_pending(input_ids, self._pending_sources(seqs, last_rows))
        return input_ids, self._to_device(positions, torch.int64), meta, last_rows

    def prepare_decode(self, seqs: list[Sequence], num_rows: int | None = None) -> None:
        """Fill the first ``num_rows`` (default: one per sequence) rows of the decode buffers.

        Rows past the sequences are padding: token 0 at position 0 with context length 0 and
        slot -1, so they write no K/V and attend to nothing (the kernels return zeros).
        """
        b = len(seqs)
        n = b if num_rows is None else num_rows
        staging = self._staging[self._parity]
        tables = self._block_tables(seqs)
        width = tables.shape[1]
        lens = np.fromiter(map(len, seqs), np.int64, b)
        pos = lens - 1
        host = staging["rows"].numpy()[:, :n]  # token, position, slot, context length
        host[0, :b] = np.fromiter((s.token_ids[-1] for s in seqs), np.int64, b)
        host[1, :b] = pos
        host[2, :b] = tables[np.arange(b), pos // self.block_size].astype(np.int64) * self.block_size \
            + pos % self.block_size
        host[3, :b] = lens
        host[:, b:] = [[0], [0], [-1], [0]]
        staging["tables"].numpy()[:b, :width] = tables
        rows = staging["rows"]
        for dst, i in ((self.decode_input_ids, 0), (self.decode_positions, 1), (self.decode_slots, 2),
                       (self.decode_context_lens, 3)):
            dst[:n].copy_(rows[i, :n], non_blocking=True)
        # Only the columns in use: entries past a row's context length are never read, so
        # stale ones (and padding rows' tables) are harmless, and the host work stays small.
        self.decode_block_tables[:b, :width].copy_(staging["tables"][:b, :width], non_blocking=True)
        self._fill_pending(self.decode_input_ids, self._pending_sources(seqs, list(range(b))))

    # ----- decode: eager, padded to a bucket, or a captured graph ---------------------------
    def _decode_forward(self, num_rows: int) -> torch.Tensor:
        """Logits (model dtype) of the first ``num_rows`` rows of the decode buffers: the body
        of a decode graph. Buckets use the preallocated attention workspace."""
        num_splits = self.bucket_num_splits.get(num_rows)
        meta = AttentionMetadata(
            is_prefill=False,
            slot_mapping=self.decode_slots[:num_rows],
            context_lens=self.decode_context_lens[:num_rows],
            block_tables=self.decode_block_tables[:num_rows],
            decode_workspace=self.decode_workspace if num_splits is not None else None,
            decode_counters=self.decode_counters if num_splits is not None else None,
            decode_num_splits=num_splits,
        )
        hidden = self.model(self.decode_input_ids[:num_rows], self.decode_positions[:num_rows], meta)
        return self.model.compute_logits(hidden)

    def _run_decode_padded(self, seqs: list[Sequence], bucket: int) -> torch.Tensor:
        """fp32 logits [len(seqs), vocab] of a decode batch run as ``bucket`` rows: by replaying
        the bucket's graph, or eagerly when it has none. Padding rows' logits are dropped."""
        self.prepare_decode(seqs, num_rows=bucket)
        graph = self.decode_graphs.get(bucket)
        if graph is None:
            return self._decode_forward(bucket)[: len(seqs)].float()
        graph.replay()
        return self.graph_logits[: len(seqs)]

    def decode_logits(self, seqs: list[Sequence]) -> torch.Tensor:
        """fp32 logits [len(seqs), vocab] for one decode token per sequence."""
        bucket = pick_bucket(self.decode_buckets, len(seqs))
        if bucket is not None:
            return self._run_decode_padded(seqs, bucket)
        self.prepare_decode(seqs)  # no buckets (CPU, enforce_eager) or past the largest one
        return self._decode_forward(len(seqs)).float()

    @torch.inference_mode()
    def capture_decode_graphs(self, max_num_seqs: int) -> None:
        """Capture one CUDA graph per bucket of ``decode_graph_buckets(max_num_seqs)``.

        Each covers the decode forward and the fp32 logits copy into ``graph_logits``; the
        attention splits are fixed per bucket and share one preallocated workspace, so a
        replay allocates nothing. Graphs share one memory pool, largest captured first so the
        smaller ones fit in what it already holds (replays never overlap).
        """
        if len({p.device for p in self.model.parameters()}) > 1:
            return  # layers on several GPUs: one graph cannot follow them yet, so stay eager
        cfg = self.cfg
        buckets = decode_graph_buckets(max_num_seqs)
        self.bucket_num_splits = {
            b: decode_num_splits(b, cfg.num_key_value_heads, self.max_blocks_per_seq, self.block_size)
            for b in buckets
        }
        numel = max(
            decode_workspace_numel(b, cfg.num_attention_heads, cfg.head_dim, self.bucket_num_splits[b])
            for b in buckets
        )
        self.decode_workspace = torch.empty(numel, dtype=torch.float32, device=self.device)
        self.decode_counters = torch.zeros(buckets[-1] * cfg.num_key_value_heads,  # decode_counters_numel
                                           dtype=torch.int32, device=self.device)
        self.graph_logits = torch.empty(buckets[-1], cfg.vocab_size, dtype=torch.float32, device=self.device)
        # Capture on all-padding inputs: nothing is written to the KV cache.
        for buffer, value in ((self.decode_input_ids, 0), (self.decode_positions, 0), (self.decode_slots, -1),
                              (self.decode_context_lens, 0), (self.decode_block_tables, 0)):
            buffer.fill_(value)
        pool = torch.cuda.graph_pool_handle()
        with torch.cuda.device(self.device):
            for b in reversed(buckets):
                # Warm-up outside the capture: Triton compiles this bucket's kernels, cuBLAS
                # sets up its handle and workspace.
                self.graph_logits[:b].copy_(self._decode_forward(b))
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.graph_logits[:b].copy_(self._decode_forward(b))
                self.decode_graphs[b] = graph
            torch.cuda.synchronize()
        self.decode_buckets = buckets

    # ----- sampling ------------------------------------------------------------------------
    def _penalty_state(self, seqs: list[Sequence], vocab: int):
        b = len(seqs)
        prompt_mask = torch.zeros(b, vocab, dtype=torch.bool, device=self.device)
        counts = torch.zeros(b, vocab, dtype=torch.int32, device=self.device)
        for i, s in enumerate(seqs):
            if not s.params.needs_penalties:
                continue  # neutral penalties: its tokens do not matter (some may be pending)
            assert not s.num_pending, "penalties need every output token on the host"
            prompt = torch.tensor(s.prompt_token_ids, dtype=torch.int64).clamp_(0, vocab - 1)
            prompt_mask[i, prompt.to(self.device)] = True
            out = s.output_token_ids
            if out:
                out_t = self._to_device(out, torch.int64).clamp_(0, vocab - 1)
                counts[i].scatter_add_(0, out_t, torch.ones_like(out_t, dtype=torch.int32))
        return prompt_mask, counts

    def sample(self, seqs: list[Sequence], logits: torch.Tensor) -> SampledStep:
        """Sample one token per row on the device and start copying them to the host; nothing
        here waits for the device."""
        params = [s.params for s in seqs]
        want_logprobs = [p.logprobs is not None for p in params]
        raw = logits if any(want_logprobs) else None
        if any(p.needs_penalties for p in params):
            logits = logits.clone() if raw is not None else logits
            prompt_mask, counts = self._penalty_state(seqs, logits.shape[1])
            ops.apply_penalties(
                logits, prompt_mask, counts,
                self._to_device([p.presence_penalty for p in params], torch.float32),
                self._to_device([p.frequency_penalty for p in params], torch.float32),
                self._to_device([p.repetition_penalty for p in params], torch.float32),
            )
        if all(p.greedy for p in params):
            tokens = logits.argmax(dim=-1)
        else:
            # The RNG step is the number of tokens generated before this one, pending ones included.
            tokens = ops.sample_tokens(
                logits,
                self._to_device([p.temperature for p in params], torch.float32),
                self._to_device([p.top_k for p in params], torch.int32),
                self._to_device([p.top_p for p in params], torch.float32),
                self._to_device([p.min_p for p in params], torch.float32),
                self._to_device([s.seed for s in seqs], torch.int64),
                self._to_device([s.num_output_tokens for s in seqs], torch.int64),
            )
        device_results = [tokens]
        if raw is not None:
            device_results += compute_logprobs(raw, tokens, max(p.logprobs or 0 for p in params))
        staging = self._staging[self._parity]
        if self.device.type == "cuda":
            tokens_host = staging["tokens"][: len(seqs)].copy_(tokens, non_blocking=True)
            # Rare (logprobs): fresh pinned buffers, freed by the caching host allocator once copied.
            host = [tokens_host, *(torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
                                   for t in device_results[1:])]
        else:
            host = device_results
        ready = staging["ready"]
        if ready is not None:
            ready.record()
        self._prev_tokens = tokens
        self._prev_rows = {s.seq_id: i for i, s in enumerate(seqs)}
        return SampledStep(seqs, host, ready, want_logprobs)

    # ----- one step --------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> SampledStep | None:
        """Launch one forward pass over ``batch`` and the sampling of ``batch.sampling_seqs``;
        returns without waiting for the device (None when no row samples a token).

        Does not advance ``num_cached_tokens``: the scheduler does that after the launch.
        """
        self._parity ^= 1
        if batch.is_pure_decode:
            seqs = batch.seqs
            logits = self.decode_logits(seqs)
        else:  # prompt chunks, possibly mixed with decode rows (q_len 1 over their context)
            seqs = batch.sampling_seqs
            input_ids, positions, meta, last_rows = self.prepare_prefill(batch.seqs, batch.num_new_tokens)
            hidden = self.model(input_ids, positions, meta)
            if not seqs:  # only partial prompt chunks: no logits needed
                return None
            rows = [r for r, p in zip(last_rows, batch.produces_token) if p]
            hidden = hidden[self._to_device(rows, torch.int64)]
            logits = self.model.compute_logits(hidden).float()
        return self.sample(seqs, logits)

    @torch.inference_mode()
    def prompt_logits(self, seqs: list[Sequence]) -> torch.Tensor:
        """Logits at every prompt position (for exactness tests); fills the cache like a prefill."""
        input_ids, positions, meta, _ = self.prepare_prefill(seqs, [len(s) - s.num_cached_tokens for s in seqs])
        logits = self.model.compute_logits(self.model(input_ids, positions, meta)).float()
        for s in seqs:
            s.num_cached_tokens = len(s)
        return logits
