"""Decode batches padded to a CUDA-graph bucket, checked on the CPU path.

There are no graphs on the CPU, but the padded decode runs the same inputs eagerly: padding
rows (context length 0, slot -1) must leave the real rows' logits and the KV cache alone.
The capture and replay code runs here with the CUDA graph API faked; the graphs themselves are
checked against eager decode in tests/gpu/test_cuda_graphs_gpu.py.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from ember import LLM, SamplingParams
from ember.cli.main import build_parser
from ember.engine.llm_engine import EngineArgs
from ember.engine.cuda_graphs import (MAX_ARGMAX_IN_GRAPH, MAX_GRAPH_BATCH, DecodeGraphs, decode_graph_buckets,
                                     pick_bucket)
from ember.ops.decode_attention import decode_split_counts, decode_workspace_numel

MAX_NUM_SEQS = 8
# Mixed prompt lengths; different max_tokens make the decode batch shrink 5, 4, 3, 2, 1,
# so it runs padded (5 -> 8, 3 -> 4) and exactly at a bucket (4, 2, 1).
PROMPTS = [[1000 + 7 * i + j for j in range(n)] for i, n in enumerate([3, 17, 40, 9, 33])]
PARAMS = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in (2, 4, 6, 8, 10)]


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return LLM(str(tiny_checkpoint), dtype="float32", device="cpu", max_model_len=256,
               max_num_seqs=MAX_NUM_SEQS, progress=False)


def test_buckets():
    assert decode_graph_buckets(256) == [1, 2, 4, 8, 16, 24, 32, *range(48, 257, 16)]
    assert decode_graph_buckets(1) == [1]
    assert decode_graph_buckets(3) == [1, 2, 3]  # capped, and max_num_seqs itself is one
    assert decode_graph_buckets(40) == [1, 2, 4, 8, 16, 24, 32, 40]
    assert decode_graph_buckets(48) == [1, 2, 4, 8, 16, 24, 32, 48]
    assert decode_graph_buckets(10_000)[-2:] == [MAX_GRAPH_BATCH - 16, MAX_GRAPH_BATCH]


def test_pick_bucket():
    buckets = decode_graph_buckets(256)
    picks = {b: pick_bucket(buckets, b) for b in (1, 2, 3, 5, 8, 9, 17, 25, 32, 33, 49, 255, 256)}
    assert picks == {1: 1, 2: 2, 3: 4, 5: 8, 8: 8, 9: 16, 17: 24, 25: 32, 32: 32, 33: 48, 49: 64,
                     255: 256, 256: 256}
    assert pick_bucket(buckets, 257) is None  # past the largest bucket: eager
    assert pick_bucket([], 1) is None  # no graphs at all


def test_no_graphs_on_cpu_and_enforce_eager_plumbing(llm, tiny_checkpoint):
    assert EngineArgs(model="x").enforce_eager is False
    assert llm.engine.runner.cuda_graphs.graphs == {} and llm.engine.runner.cuda_graphs.buckets == []
    eager = LLM(str(tiny_checkpoint), dtype="float32", device="cpu", max_model_len=64, max_num_seqs=2,
                progress=False, enforce_eager=True)
    assert eager.engine.args.enforce_eager and eager.engine.runner.cuda_graphs.graphs == {}
    assert build_parser().parse_args(["-m", "x", "--enforce-eager"]).enforce_eager is True
    assert build_parser().parse_args(["-m", "x"]).enforce_eager is False


def test_padded_decode_step_matches_unpadded(llm, monkeypatch):
    """Every decode step of a generation runs padded and unpadded; logits, tokens and the
    KV cache outside the batch's own slots must agree."""
    runner = llm.engine.runner
    buckets = decode_graph_buckets(MAX_NUM_SEQS)
    unpadded_logits = runner.decode_logits
    k_cache = llm.engine.model.model.layers[0].self_attn.attn.k_cache
    checked = []

    def padded_then_unpadded(seqs):
        b = len(seqs)
        bucket = pick_bucket(buckets, b)
        cache_before = k_cache.clone()
        padded, argmax_done = runner._run_decode_padded(seqs, bucket)
        padded = padded.clone()
        assert not argmax_done  # buckets without graphs leave the argmax to the sampler
        assert runner.inputs.decode_context_lens[b:bucket].eq(0).all() and runner.inputs.decode_slots[b:bucket].eq(-1).all()
        # Padding writes no K/V: only the batch's own slots changed.
        written = torch.zeros(k_cache.shape[0] * k_cache.shape[1], dtype=torch.bool)
        written[runner.inputs.decode_slots[:b]] = True
        changed = (k_cache != cache_before).flatten(2).any(-1).flatten()
        assert not (changed & ~written).any()
        logits, _ = unpadded_logits(seqs)  # written last, so the generation goes on exactly as eager
        assert padded.shape == logits.shape
        # Bit-exact only where the CPU GEMM picks the same kernel for both row counts (it
        # differs e.g. for 2 vs 4 rows); fp32 rounding is the only difference allowed.
        torch.testing.assert_close(padded, logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(padded.argmax(-1), logits.argmax(-1))
        checked.append((b, bucket))
        return logits, False

    want = [o.token_ids for o in llm.generate(PROMPTS, PARAMS, use_tqdm=False)]
    monkeypatch.setattr(runner, "decode_logits", padded_then_unpadded)
    got = [o.token_ids for o in llm.generate(PROMPTS, PARAMS, use_tqdm=False)]
    assert got == want
    assert {(5, 8), (4, 4), (3, 4), (2, 2), (1, 1)} <= set(checked)


def test_generation_through_buckets_matches_eager(llm, monkeypatch):
    """With buckets set (as after graph capture, minus the graphs), every decode step runs
    padded through the run() dispatch; the tokens are those of the unpadded eager run."""
    runner = llm.engine.runner
    want = [o.token_ids for o in llm.generate(PROMPTS, PARAMS, use_tqdm=False)]
    padded_batches = []
    run_padded = runner._run_decode_padded

    def record(seqs, bucket):
        padded_batches.append((len(seqs), bucket))
        return run_padded(seqs, bucket)

    monkeypatch.setattr(runner.cuda_graphs, "buckets", decode_graph_buckets(MAX_NUM_SEQS))
    monkeypatch.setattr(runner, "_run_decode_padded", record)
    got = [o.token_ids for o in llm.generate(PROMPTS, PARAMS, use_tqdm=False)]
    assert got == want
    assert (5, 8) in padded_batches and (3, 4) in padded_batches



class FakeGraph:
    """torch.cuda.CUDAGraph on the CPU: replay() reruns the decode forward of the bucket it
    was captured for, into the graphs' logits, as the real graph's kernels would."""

    def __init__(self):
        self.graphs, self.bucket, self.num_splits, self.replays = None, None, None, 0

    def replay(self):
        self.replays += 1
        with torch.inference_mode():
            self.graphs.forward(self.bucket, self.num_splits, out=self.graphs.logits[: self.bucket],
                                argmax=self.bucket in self.graphs.argmax_buckets)


def test_capture_and_replay_wiring_on_cpu(tiny_checkpoint, monkeypatch):
    """capture() with the CUDA graph API faked: buckets, per-bucket split counts, the shared
    workspace, counters and logits, capture order and all-padding capture inputs; then every
    decode step of a generation replays a "graph" (the one for its longest context), and the
    tokens are those of eager decoding."""
    # A capacity of 1,024 tokens: batch 1 gets graphs with 8 and 16 attention splits, and a
    # 600-token prompt runs the 16-split graph until it finishes.
    llm = LLM(str(tiny_checkpoint), dtype="float32", device="cpu", max_model_len=1024, max_num_seqs=MAX_NUM_SEQS,
              progress=False)
    prompts = [*PROMPTS, [2000 + i for i in range(600)]]
    params = [*PARAMS, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)]
    runner, cfg = llm.engine.runner, llm.engine.runner.cfg
    want = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    k_cache = llm.engine.model.model.layers[0].self_attn.attn.k_cache
    k_before = k_cache.clone()
    graphs = DecodeGraphs(runner.model, cfg, runner.inputs, runner.block_size, runner.max_blocks_per_seq,
                          runner.device)
    forwards = []
    forward = graphs.forward

    def recording_forward(num_rows, num_splits, out=None, argmax=False):
        forwards.append((num_rows, num_splits))
        assert out is not None and out.data_ptr() == graphs.logits.data_ptr()  # the LM head writes in place
        assert argmax == (num_rows <= MAX_ARGMAX_IN_GRAPH)
        return forward(num_rows, num_splits, out=out, argmax=argmax)

    @contextlib.contextmanager
    def fake_capture(graph, pool=None):
        inputs = runner.inputs
        assert inputs.decode_slots.eq(-1).all() and inputs.decode_context_lens.eq(0).all()  # all padding
        yield
        graph.graphs, (graph.bucket, graph.num_splits) = graphs, forwards[-1]

    graphs.forward = recording_forward
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "CUDAGraph", FakeGraph)
        m.setattr(torch.cuda, "graph", fake_capture)
        m.setattr(torch.cuda, "graph_pool_handle", lambda: None)
        m.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
        m.setattr(torch.cuda, "synchronize", lambda: None)
        graphs.capture(MAX_NUM_SEQS)
    del graphs.forward
    buckets = decode_graph_buckets(MAX_NUM_SEQS)
    assert graphs.buckets == buckets and graphs.captured_buckets == buckets
    assert graphs.split_counts == {
        b: decode_split_counts(b, cfg.num_key_value_heads, runner.max_blocks_per_seq, runner.block_size)
        for b in buckets}
    assert graphs.split_counts[1] == graphs.split_counts[8] == [8, 16]  # 2 kv heads: up to 32 splits wanted
    # Largest first, each split count of a bucket (most first); warm-up, then capture.
    assert forwards == [(b, n) for b in reversed(buckets) for n in reversed(graphs.split_counts[b]) for _ in range(2)]
    assert all((g.bucket, g.num_splits) == key for key, g in graphs.graphs.items())
    assert graphs.workspace.numel() == max(
        decode_workspace_numel(b, cfg.num_attention_heads, cfg.head_dim, max(graphs.split_counts[b]))
        for b in buckets)
    assert graphs.counters.shape == (MAX_NUM_SEQS * cfg.num_key_value_heads,) and graphs.counters.eq(0).all()
    assert graphs.logits.shape == (MAX_NUM_SEQS, cfg.vocab_size) and graphs.logits.dtype == runner.model.logits_dtype
    assert torch.equal(k_cache, k_before)  # capture wrote no K/V

    monkeypatch.setattr(runner, "cuda_graphs", graphs)
    got = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert got == want
    assert {key for key, g in graphs.graphs.items() if g.replays} >= {(1, 8), (2, 8), (4, 8), (8, 16)}
    # The graph by the longest context: 8 splits up to 512 tokens, then 16
    assert [graphs.graph_for(1, n) for n in (1, 512, 513, 1024)] == [graphs.graphs[1, 8]] * 2 + [graphs.graphs[1, 16]] * 2
