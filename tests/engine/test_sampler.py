"""The sampler: seeded sampling through the packed per-row parameters gives exactly the tokens
of the per-parameter tensors it used to build, step after step while the batch changes; and
greedy rows, penalties, logprobs and the hand-off to the next step's inputs."""

from __future__ import annotations

import random

import pytest
import torch

from ember import SamplingParams, ops
from ember.engine.host_staging import HostStaging
from ember.engine.sampler import SampledStep, Sampler
from ember.engine.sampler_inputs import packed_bytes
from ember.engine.sequence import Sequence
from ember.engine.step_inputs import PendingTokens
from ember.ops.sampling import compute_logprobs

MAX_NUM_SEQS = 8
VOCAB = 300

POOL_PARAMS = [
    SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=7),
    SamplingParams(temperature=0),
    SamplingParams(temperature=1.1, min_p=0.05, seed=11),
    SamplingParams(temperature=0.5, top_p=0.5, seed=2**70),  # wraps to int64
    SamplingParams(temperature=0.9, top_k=5, seed=3, logprobs=3),
    SamplingParams(temperature=0.7, seed=5, repetition_penalty=1.3, presence_penalty=0.5),
    SamplingParams(temperature=0, frequency_penalty=0.4, logprobs=0),
    SamplingParams(temperature=1.0, seed=-(2**63), top_k=2**40),  # top_k clamped to 0
    SamplingParams(temperature=0.3, top_k=1),
    SamplingParams(temperature=2.0, top_p=0.95, min_p=0.2, seed=99),
]


def make_sampler() -> Sampler:
    staging = HostStaging(MAX_NUM_SEQS, 4, packed_bytes(MAX_NUM_SEQS), pin=False)
    return Sampler(torch.device("cpu"), MAX_NUM_SEQS, staging, PendingTokens())


def make_pool() -> list[Sequence]:
    return [Sequence([10 + i, 20 + i, 30 + i, 10 + i], p, seed=p.seed if p.seed is not None else 1000 + i)
            for i, p in enumerate(POOL_PARAMS)]


def tokens_as_before(sampler: Sampler, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
    """The sampled tokens as the runner computed them before the parameters were packed: one
    tensor per parameter, built from the Python values."""
    params = [s.params for s in seqs]
    logits = logits.clone()
    if any(p.needs_penalties for p in params):
        prompt_mask, counts = sampler._penalty_state(seqs, logits.shape[1])
        ops.apply_penalties(
            logits, prompt_mask, counts,
            torch.tensor([p.presence_penalty for p in params], dtype=torch.float32),
            torch.tensor([p.frequency_penalty for p in params], dtype=torch.float32),
            torch.tensor([p.repetition_penalty for p in params], dtype=torch.float32),
        )
    if all(p.greedy for p in params):
        return logits.argmax(dim=-1)
    return ops.sample_tokens(
        logits,
        torch.tensor([p.temperature for p in params], dtype=torch.float32),
        torch.tensor([p.top_k for p in params], dtype=torch.int32),
        torch.tensor([p.top_p for p in params], dtype=torch.float32),
        torch.tensor([p.min_p for p in params], dtype=torch.float32),
        torch.tensor([s.seed for s in seqs], dtype=torch.int64),
        torch.tensor([s.num_output_tokens for s in seqs], dtype=torch.int64),
    )


def test_seeded_sampling_equals_per_parameter_tensors_across_changing_batches():
    sampler, pool = make_sampler(), make_pool()
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    compositions = [[0, 1, 2, 3, 4], [3, 0], [9, 8, 7, 2, 1, 0, 4, 3], [2], [5, 0, 6, 9, 1, 8],
                    [1, 6], [4, 3, 2, 1, 0, 9, 8, 7], [7, 5], [0, 2, 3, 9], [1]]
    sampled_rows = 0
    for composition in compositions:
        sampler.staging.flip()  # as each launch does
        seqs = [pool[i] for i in composition]
        logits = torch.randn(len(seqs), VOCAB, generator=gen) * rng.choice([0.5, 2.0, 6.0])
        want = tokens_as_before(sampler, seqs, logits)
        step = sampler.sample(seqs, logits)
        tokens, _ = step.wait()
        assert tokens == want.tolist(), composition
        sampled_rows += sum(not s.params.greedy for s in seqs)
        for s, t in zip(seqs, tokens):  # steps advance, penalties see new output tokens
            s.append(t)
    assert sampled_rows > 25


def test_bf16_logits_sample_exactly_as_their_fp32_upcast():
    """The LM head hands the sampler logits in the model's dtype: every path (greedy, sampled,
    penalties, logprobs) must give what the fp32 copy of them gave, and leave them untouched."""
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(MAX_NUM_SEQS, VOCAB, generator=gen) * 4).to(torch.bfloat16)
    logits[1, 17] = logits[1, 18] = logits[1].max() + 1  # an exact tie on a greedy row: the first wins
    kept = logits.clone()
    got = make_sampler().sample(make_pool()[:MAX_NUM_SEQS], logits).wait()
    want = make_sampler().sample(make_pool()[:MAX_NUM_SEQS], logits.float()).wait()
    assert got[0][1] == 17
    assert got[0] == want[0]
    assert [lp and (lp.token_id, lp.logprob, lp.top) for lp in got[1]] == \
        [lp and (lp.token_id, lp.logprob, lp.top) for lp in want[1]]
    assert torch.equal(logits, kept)  # penalties worked on an fp32 copy


def test_a_row_does_not_depend_on_the_rest_of_its_batch():
    """The RNG is keyed by (seed, step): a row's token is the same alone or in any batch."""
    sampler = make_sampler()
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(len(POOL_PARAMS), VOCAB, generator=gen) * 3
    pool = [s for s in make_pool() if not s.params.needs_penalties]
    rows = [i for i, s in enumerate(make_pool()) if not s.params.needs_penalties]
    together = sampler.sample(pool, logits[rows]).wait()[0]
    for j in (len(pool) - 1, 0, 2):
        sampler.staging.flip()
        alone = sampler.sample([pool[j]], logits[rows[j] : rows[j] + 1]).wait()[0]
        assert alone == [together[j]]


def test_greedy_logprobs_and_pending_tokens():
    sampler = make_sampler()
    pool = make_pool()
    seqs = [pool[1], pool[4], pool[6]]  # greedy, sampled with logprobs=3, greedy+penalty with logprobs=0
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(2))
    step = sampler.sample(seqs, logits)
    assert isinstance(step, SampledStep) and step.ready is None and step.want_logprobs == [False, True, True]
    tokens, logprobs = step.wait()
    assert tokens[0] == logits[0].argmax().item()
    assert logprobs[0] is None and len(logprobs[1].top) == 3 and logprobs[2].top == {}
    # Logprobs are of the raw logits, penalties and temperature aside.
    chosen, _, _ = compute_logprobs(logits, torch.tensor(tokens), 3)
    assert [lp.logprob for lp in logprobs[1:]] == pytest.approx(chosen[1:].tolist())
    assert logprobs[1].token_id == tokens[1]
    # The tokens stay on the device for the next step's inputs.
    assert sampler.pending.tokens.tolist() == tokens
    assert sampler.pending.rows == {s.seq_id: i for i, s in enumerate(seqs)}


def test_tokens_land_in_tokens_out_and_a_graphs_argmax_is_kept_only_where_valid():
    """Every step's tokens go into the first rows of ``tokens_out`` (the decode token buffer).
    With ``argmax_done`` (a graph wrote the argmax there) plain greedy rows keep what is there;
    sampled batches and penalised greedy ones overwrite it."""
    out = torch.full((MAX_NUM_SEQS + 2,), -1, dtype=torch.int64)
    staging = HostStaging(MAX_NUM_SEQS, 4, packed_bytes(MAX_NUM_SEQS), pin=False)
    sampler = Sampler(torch.device("cpu"), MAX_NUM_SEQS, staging, PendingTokens(), tokens_out=out)
    pool = make_pool()
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(4))
    greedy = [pool[1], Sequence([1, 2], SamplingParams(temperature=0), seed=0),
              Sequence([3], SamplingParams(temperature=0), seed=0)]
    tokens, _ = sampler.sample(greedy, logits).wait()
    assert tokens == logits.argmax(-1).tolist() == out[:3].tolist() and out[3:].eq(-1).all()
    assert sampler.pending.tokens.data_ptr() == out.data_ptr()
    out[:3] = torch.tensor([5, 6, 7])  # as if a graph had written them: kept
    assert sampler.sample(greedy, logits, argmax_done=True).wait()[0] == [5, 6, 7]
    out[:1] = 5
    penalised = [pool[6]]  # greedy with a frequency penalty: the graph's argmax is stale
    assert sampler.sample(penalised, logits[:1], argmax_done=True).wait()[0] == tokens_as_before(
        sampler, penalised, logits[:1]).tolist()
    sampled = [pool[0], pool[2]]
    want = tokens_as_before(sampler, sampled, logits[:2]).tolist()
    assert sampler.sample(sampled, logits[:2], argmax_done=True).wait()[0] == want == out[:2].tolist()


def test_penalties_need_every_token_on_the_host():
    sampler = make_sampler()
    s = make_pool()[5]
    s.append_pending()
    with pytest.raises(AssertionError, match="penalties"):
        sampler.sample([s], torch.zeros(1, VOCAB))
