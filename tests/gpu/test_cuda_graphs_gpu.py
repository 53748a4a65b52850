"""CUDA-graph decode against eager decode on a Qwen3-0.6B-shaped dummy model.

Same weights (dummy init, same seed), same requests: greedy tokens must be identical for
batch sizes that sit exactly on a bucket (1, 8, 32) and one that runs padded (3 -> 4), with
mixed prompt lengths, in float32 and bfloat16. Results also go to EMBER_GPU_REPORT.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from ember import LLM, SamplingParams
from ember.tools.random_checkpoint import QWEN3_SHAPES, qwen3_config

pytestmark = pytest.mark.gpu

TOKENIZER_DIR = Path(__file__).parents[1] / "data" / "qwen3-tokenizer"
REPORT = Path(os.environ.get("EMBER_GPU_REPORT", "/tmp/ember_gpu_report.jsonl"))
BATCH_SIZES = [1, 3, 8, 32]
MAX_NUM_SEQS = 32
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("qwen3-0.6B-shape")
    (folder / "config.json").write_text(json.dumps(qwen3_config(**QWEN3_SHAPES["0.6B"])))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(TOKENIZER_DIR / name, folder / name)
    return folder


def make_llm(folder: Path, dtype: str, **kwargs) -> LLM:
    kwargs.setdefault("max_num_seqs", MAX_NUM_SEQS)
    kwargs.setdefault("max_model_len", 512)
    return LLM(str(folder), dtype=dtype, device="cuda", load_format="dummy", seed=0, progress=False, **kwargs)


def prompts(batch_size: int) -> list[list[int]]:
    """Prompts of 5 to ~180 tokens, different in every batch."""
    return [[1000 + (97 * batch_size + 31 * i + 7 * j) % 100_000 for j in range(5 + (53 * i) % 180)]
            for i in range(batch_size)]


def generate_all(llm: LLM) -> dict[int, list[list[int]]]:
    return {b: [o.token_ids for o in llm.generate(prompts(b), GREEDY, use_tqdm=False)] for b in BATCH_SIZES}


def free_gpu():
    gc.collect()
    torch.cuda.empty_cache()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graph_decode_matches_eager(model_dir, dtype):
    eager = make_llm(model_dir, dtype, enforce_eager=True)
    assert eager.engine.runner.cuda_graphs.graphs == {}
    want = generate_all(eager)
    del eager
    free_gpu()

    llm = make_llm(model_dir, dtype)
    runner = llm.engine.runner
    assert runner.cuda_graphs.captured_buckets == [1, 2, 4, 8, 16, 24, 32]
    replayed = []
    run_padded = runner._run_decode_padded

    def record(seqs, bucket):
        replayed.append((len(seqs), bucket))
        return run_padded(seqs, bucket)

    runner._run_decode_padded = record
    got = generate_all(llm)
    del llm
    free_gpu()

    same = {b: sum(g == w for g, w in zip(got[b], want[b])) for b in BATCH_SIZES}
    with REPORT.open("a") as f:
        f.write(json.dumps(dict(test="cuda_graph_vs_eager", dtype=dtype, identical_seqs=same,
                                batch_sizes=BATCH_SIZES)) + "\n")
    assert {(1, 1), (3, 4), (8, 8), (32, 32)} <= set(replayed)
    for b in BATCH_SIZES:
        assert got[b] == want[b], f"batch {b}: {same[b]}/{b} sequences identical"


def test_graph_decode_step_syncs_once(model_dir):
    """A decode step waits on the device once: for the sampled tokens."""
    llm = make_llm(model_dir, "bfloat16")
    engine = llm.engine
    for p in prompts(3):
        engine.add_request(p, GREEDY)
    engine.step()  # prefill
    engine.step()  # first decode step (warm)
    torch.cuda.synchronize()

    def syncs_during(fn):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return result, [str(w.message) for w in caught if "synchroniz" in str(w.message)]

    _, one_tolist = syncs_during(lambda: torch.zeros(3, device="cuda").tolist())
    outputs, syncs = syncs_during(engine.step)
    assert len(outputs) == 3 and len(one_tolist) >= 1
    assert len(syncs) <= len(one_tolist), syncs
    while engine.has_unfinished():
        engine.step()


def test_graph_decode_with_pdl_matches_without(model_dir, monkeypatch):
    """The tests above run with Programmatic Dependent Launch (the default on sm_90+); the same
    engine with EMBER_DISABLE_PDL=1 must give the same greedy tokens, graphs and eager alike."""
    from ember.ops.dispatch import pdl_enabled

    monkeypatch.delenv("EMBER_DISABLE_PDL", raising=False)
    if torch.cuda.get_device_capability()[0] >= 9:
        assert pdl_enabled(torch.device("cuda"))
    got = {}
    for pdl in (True, False):
        if not pdl:
            monkeypatch.setenv("EMBER_DISABLE_PDL", "1")
        llm = make_llm(model_dir, "bfloat16")
        assert llm.engine.runner.cuda_graphs.captured_buckets == [1, 2, 4, 8, 16, 24, 32]
        got[pdl] = generate_all(llm)
        del llm
        free_gpu()
    same = {b: sum(g == w for g, w in zip(got[True][b], got[False][b])) for b in BATCH_SIZES}
    with REPORT.open("a") as f:
        f.write(json.dumps(dict(test="cuda_graph_pdl_vs_no_pdl", identical_seqs=same, batch_sizes=BATCH_SIZES)) + "\n")
    for b in BATCH_SIZES:
        assert got[True][b] == got[False][b], f"batch {b}: {same[b]}/{b} sequences identical"


MIXED = [
    SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
    SamplingParams(temperature=0.8, seed=3, max_tokens=16, ignore_eos=True),
    SamplingParams(temperature=0, repetition_penalty=1.3, max_tokens=16, ignore_eos=True),
    SamplingParams(temperature=0.7, top_p=0.9, seed=5, logprobs=2, max_tokens=16, ignore_eos=True),
    SamplingParams(temperature=0, logprobs=1, max_tokens=12, ignore_eos=True),
]


def test_graph_decode_with_mixed_sampling_matches_eager(model_dir):
    """Small buckets' graphs write the greedy argmax into the decode token buffer, larger ones
    leave it to the sampler; either way sampled, penalised and logprob rows beside greedy ones
    must give eager decoding's tokens and logprobs (seeded sampling makes that exact)."""
    def run(llm):
        out = {}
        for b in (5, 40):  # buckets 8 (argmax in the graph) and 48 (not)
            params = [MIXED[i % len(MIXED)] for i in range(b)]
            outs = llm.generate(prompts(b), params, use_tqdm=False)
            out[b] = [(o.token_ids, [lp and (lp.token_id, round(lp.logprob, 5)) for lp in (o.logprobs or [])])
                      for o in outs]
        return out

    want = run(make_llm(model_dir, "bfloat16", enforce_eager=True, max_num_seqs=48))
    free_gpu()
    llm = make_llm(model_dir, "bfloat16", max_num_seqs=48)
    graphs = llm.engine.runner.cuda_graphs
    assert graphs.captured_buckets == [1, 2, 4, 8, 16, 24, 32, 48] and 8 in graphs.argmax_buckets
    assert 48 not in graphs.argmax_buckets
    got = run(llm)
    del llm
    free_gpu()
    same = {b: sum(g == w for g, w in zip(got[b], want[b])) for b in got}
    with REPORT.open("a") as f:
        f.write(json.dumps(dict(test="cuda_graph_vs_eager_mixed_sampling", identical_seqs=same)) + "\n")
    for b in got:
        assert got[b] == want[b], f"batch {b}: {same[b]}/{b} sequences identical"


def test_graphs_per_split_count_match_eager(model_dir):
    """A capacity of 2,048 tokens gives batch 1 graphs with 8, 16 and 32 attention splits, picked by
    the longest context: sequences that grow past 512 and 1,024 tokens switch graphs mid-generation
    and must still give eager decoding's greedy tokens (eager picks the same split counts)."""
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    batches = [[[1000 + 13 * j % 90_000 for j in range(n)] for n in lens] for lens in ([490], [1000], [20, 1000])]

    def run(llm):
        return [[o.token_ids for o in llm.generate(b, params, use_tqdm=False)] for b in batches]

    want = run(make_llm(model_dir, "bfloat16", enforce_eager=True, max_model_len=2048))
    free_gpu()
    llm = make_llm(model_dir, "bfloat16", max_model_len=2048)
    graphs = llm.engine.runner.cuda_graphs
    assert graphs.split_counts[1] == [8, 16, 32] and graphs.split_counts[2] == [8, 16, 32]
    replayed = []
    replay_for = graphs.run_bucket
    graphs.run_bucket = lambda bucket, n, longest: replayed.append((bucket, graphs.num_splits(bucket, longest))) \
        or replay_for(bucket, n, longest)
    got = run(llm)
    del llm
    free_gpu()
    with REPORT.open("a") as f:
        f.write(json.dumps(dict(test="cuda_graphs_per_split_count_vs_eager",
                                identical=[g == w for g, w in zip(got, want)], replayed=sorted(set(replayed)))) + "\n")
    assert {(1, 8), (1, 16), (1, 32), (2, 16), (2, 32)} <= set(replayed)
    assert got == want
