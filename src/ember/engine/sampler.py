"""Sampling one token per row on the device, and handing the tokens to the host.

Nothing here waits for the device: ``Sampler.sample`` launches the penalties, the sampling
and the copies back to the host, and returns a ``SampledStep`` to wait on later. The sampled
tokens also stay on the device (``PendingTokens``) for the next step's inputs: they are written
into the decode token buffer (``tokens_out``), where a next decode step of the same rows reads
them as they are. A decode graph may already have written the greedy tokens there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember import ops
from ember.engine.host_staging import HostStaging, copy_to_device
from ember.engine.sampler_inputs import PENALTY_FIELDS, SAMPLING_FIELDS, packed_bytes, stage_row_params
from ember.engine.sequence import Sequence, TokenLogprobs
from ember.engine.step_inputs import PendingTokens
from ember.ops.sampling import compute_logprobs


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


class Sampler:
    """Penalties, sampling and logprobs of a step's rows, launched without waiting."""

    def __init__(self, device: torch.device, max_num_seqs: int, staging: HostStaging, pending: PendingTokens,
                 tokens_out: torch.Tensor | None = None):
        self.device = device
        # int64 [>= max_num_seqs] on the device: each step's tokens land in its first rows.
        self.tokens_out = torch.zeros(max_num_seqs, dtype=torch.int64, device=device) if tokens_out is None \
            else tokens_out
        self.pin = device.type == "cuda"
        self.staging = staging
        self.pending = pending
        # Where the packed per-row parameters land (see sampler_inputs). One buffer serves
        # every step: a step's copy into it is queued after the last step's kernels read it.
        self.row_params = torch.zeros(packed_bytes(max_num_seqs), dtype=torch.uint8, device=device)

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
                out_t = copy_to_device(out, torch.int64, self.device, self.pin).clamp_(0, vocab - 1)
                counts[i].scatter_add_(0, out_t, torch.ones_like(out_t, dtype=torch.int32))
        return prompt_mask, counts

    def sample(self, seqs: list[Sequence], logits: torch.Tensor, argmax_done: bool = False) -> SampledStep:
        """Sample one token per row on the device into ``tokens_out`` and start copying them to
        the host (unless a decode graph already wrote them there); nothing here waits for the
        device. ``argmax_done``: ``tokens_out`` already holds the logits' argmax (a decode graph
        computed it, and also wrote it into this launch's pinned ``staging.tokens``), which greedy
        rows then keep."""
        params = [s.params for s in seqs]
        want_logprobs = [p.logprobs is not None for p in params]
        raw = logits if any(want_logprobs) else None
        staging = self.staging.current
        needs_penalties = any(p.needs_penalties for p in params)
        greedy = all(p.greedy for p in params)
        fields = (PENALTY_FIELDS if needs_penalties else ()) + (() if greedy else SAMPLING_FIELDS)
        rows = stage_row_params(seqs, fields, staging.sampling_params, self.row_params) if fields else {}
        if needs_penalties:
            # In place, in fp32 (as HF's processors see them); a copy when raw feeds logprobs.
            logits = logits.to(torch.float32, copy=raw is not None)
            prompt_mask, counts = self._penalty_state(seqs, logits.shape[1])
            ops.apply_penalties(logits, prompt_mask, counts, rows["presence_penalty"], rows["frequency_penalty"],
                                rows["repetition_penalty"])
        tokens = self.tokens_out[: len(seqs)]
        if not greedy:
            tokens.copy_(ops.sample_tokens(logits, rows["temperature"], rows["top_k"], rows["top_p"], rows["min_p"],
                                           rows["seeds"], rows["steps"]))
        elif needs_penalties or not argmax_done:  # penalties changed the logits the graph saw
            torch.argmax(logits, dim=-1, out=tokens)
        device_results = [tokens]
        if raw is not None:
            device_results += compute_logprobs(raw, tokens, max(p.logprobs or 0 for p in params))
        if self.device.type == "cuda":
            tokens_host = staging.tokens[: len(seqs)]
            if not (argmax_done and greedy and not needs_penalties):  # else the graph wrote them there
                tokens_host.copy_(tokens, non_blocking=True)
            # Rare (logprobs): fresh pinned buffers, freed by the caching host allocator once copied.
            host = [tokens_host, *(torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
                                   for t in device_results[1:])]
        else:  # the next step overwrites tokens_out before this step is read
            host = [tokens.clone(), *device_results[1:]]
        ready = staging.ready
        if ready is not None:
            ready.record()
        self.pending.record(tokens, seqs)
        return SampledStep(seqs, host, ready, want_logprobs)
