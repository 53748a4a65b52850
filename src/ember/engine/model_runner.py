"""Turns scheduled sequences into one forward pass plus sampling on the device.

Decode inputs go through preallocated device buffers (token ids, positions, slots, context
lengths, block tables, sampling parameters) filled by one host-to-device copy each, and the
step itself never waits on the device, so a later change can capture it as a CUDA graph.
"""

from __future__ import annotations

import torch

from ember import ops
from ember.config import ModelConfig
from ember.engine.block_manager import BlockManager
from ember.engine.sequence import Sequence, TokenLogprobs
from ember.layers.attention import AttentionMetadata
from ember.ops.sampling import compute_logprobs


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        cfg: ModelConfig,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_model_len: int,
        device: torch.device,
    ):
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

    # ----- input preparation ---------------------------------------------------------------
    def _to_device(self, data, dtype) -> torch.Tensor:
        t = torch.tensor(data, dtype=dtype, pin_memory=self.pin)
        return t.to(self.device, non_blocking=True)

    def _block_tables(self, seqs: list[Sequence], width: int) -> list[list[int]]:
        return [s.block_table + [0] * (width - len(s.block_table)) for s in seqs]

    def prepare_prefill(self, seqs: list[Sequence]):
        ids, positions, slots, cu = [], [], [], [0]
        for s in seqs:
            start = s.num_cached_tokens
            ids.extend(s.token_ids[start:])
            positions.extend(range(start, len(s)))
            slots.extend(self.block_manager.slot(s, p) for p in range(start, len(s)))
            cu.append(cu[-1] + len(s) - start)
        width = max(len(s.block_table) for s in seqs)
        meta = AttentionMetadata(
            is_prefill=True,
            slot_mapping=self._to_device(slots, torch.int64),
            context_lens=self._to_device([len(s) for s in seqs], torch.int32),
            block_tables=self._to_device(self._block_tables(seqs, width), torch.int32),
            cu_seqlens_q=self._to_device(cu, torch.int32),
            max_seqlen_q=max(cu[i + 1] - cu[i] for i in range(len(seqs))),
        )
        logits_rows = self._to_device([c - 1 for c in cu[1:]], torch.int64)
        return self._to_device(ids, torch.int64), self._to_device(positions, torch.int64), meta, logits_rows

    def prepare_decode(self, seqs: list[Sequence]):
        b = len(seqs)
        rows = [[s.token_ids[-1], len(s) - 1, self.block_manager.slot(s, len(s) - 1), len(s)] for s in seqs]
        host = self._to_device(rows, torch.int64)
        self.decode_input_ids[:b].copy_(host[:, 0])
        self.decode_positions[:b].copy_(host[:, 1])
        self.decode_slots[:b].copy_(host[:, 2])
        self.decode_context_lens[:b].copy_(host[:, 3])
        tables = torch.tensor(self._block_tables(seqs, self.max_blocks_per_seq), dtype=torch.int32, pin_memory=self.pin)
        self.decode_block_tables[:b].copy_(tables, non_blocking=True)
        meta = AttentionMetadata(
            is_prefill=False,
            slot_mapping=self.decode_slots[:b],
            context_lens=self.decode_context_lens[:b],
            block_tables=self.decode_block_tables[:b],
        )
        return self.decode_input_ids[:b], self.decode_positions[:b], meta

    # ----- sampling ------------------------------------------------------------------------
    def _penalty_state(self, seqs: list[Sequence], vocab: int):
        b = len(seqs)
        prompt_mask = torch.zeros(b, vocab, dtype=torch.bool, device=self.device)
        counts = torch.zeros(b, vocab, dtype=torch.int32, device=self.device)
        for i, s in enumerate(seqs):
            prompt = torch.tensor(s.prompt_token_ids, dtype=torch.int64).clamp_(0, vocab - 1)
            prompt_mask[i, prompt.to(self.device)] = True
            out = s.output_token_ids
            if out:
                out_t = self._to_device(out, torch.int64).clamp_(0, vocab - 1)
                counts[i].scatter_add_(0, out_t, torch.ones_like(out_t, dtype=torch.int32))
        return prompt_mask, counts

    def sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
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
            tokens = ops.sample_tokens(
                logits,
                self._to_device([p.temperature for p in params], torch.float32),
                self._to_device([p.top_k for p in params], torch.int32),
                self._to_device([p.top_p for p in params], torch.float32),
                self._to_device([p.min_p for p in params], torch.float32),
                self._to_device([s.seed for s in seqs], torch.int64),
                self._to_device([s.num_output_tokens for s in seqs], torch.int64),
            )
        token_list = tokens.tolist()  # the one device->host sync of a step
        if raw is not None:
            num_top = max(p.logprobs or 0 for p in params)
            chosen, top_ids, top_lps = compute_logprobs(raw, tokens, num_top)
            chosen, top_ids, top_lps = chosen.tolist(), top_ids.tolist(), top_lps.tolist()
            for i, s in enumerate(seqs):
                if want_logprobs[i]:
                    k = s.params.logprobs
                    top = dict(zip(top_ids[i][:k], top_lps[i][:k]))
                    s.logprobs.append(TokenLogprobs(token_list[i], chosen[i], top))
        return token_list

    # ----- one step --------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, seqs: list[Sequence], is_prefill: bool) -> list[int]:
        if is_prefill:
            input_ids, positions, meta, rows = self.prepare_prefill(seqs)
            hidden = self.model(input_ids, positions, meta)[rows]
        else:
            input_ids, positions, meta = self.prepare_decode(seqs)
            hidden = self.model(input_ids, positions, meta)
        logits = self.model.compute_logits(hidden).float()
        tokens = self.sample(seqs, logits)
        for s in seqs:
            s.num_cached_tokens = len(s)
        return tokens

    @torch.inference_mode()
    def prompt_logits(self, seqs: list[Sequence]) -> torch.Tensor:
        """Logits at every prompt position (for exactness tests); fills the cache like a prefill."""
        input_ids, positions, meta, _ = self.prepare_prefill(seqs)
        logits = self.model.compute_logits(self.model(input_ids, positions, meta)).float()
        for s in seqs:
            s.num_cached_tokens = len(s)
        return logits
