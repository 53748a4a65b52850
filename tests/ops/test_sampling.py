"""Sampling and logprobs: kernels against references, references against definitions.

Kernel and reference may legitimately differ only where fp32 rounding decides (a cumulative mass
within rounding of top_p, a probability within rounding of min_p * max, Gumbel scores within an
ulp). Random normal logits put such a coincidence at ~1e-6 per row, so token-for-token equality
is asserted; exact ties are built in on purpose, since both sides keep every tied token.
"""


import torch

# tests/conftest.py sets TRITON_INTERPRET=1 without a GPU, before ember.ops is imported.

import itertools

import pytest

from ember.ops import sampling
from ember.ops.sampling import (
    compute_logprobs,
    kept_tokens_reference,
    sample_tokens,
    sample_tokens_reference,
    sample_tokens_triton,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # kernels run on CPU tensors in the interpreter


@pytest.fixture(params=["default", "candidates", "full-row"])
def merge_path(request, monkeypatch):
    """Force the kernel's merge through the candidates (every logit is one) or the full-row
    search (one candidate per split: the kept set never fits)."""
    forced = {"default": sampling._CANDIDATES_PER_SPLIT, "candidates": 1024, "full-row": 1}[request.param]
    monkeypatch.setattr(sampling, "_CANDIDATES_PER_SPLIT", forced)
    return request.param


def make_params(rows, device=DEVICE):
    """rows: (temperature, top_k, top_p, min_p) per row -> the four parameter tensors."""
    temperature, top_k, top_p, min_p = zip(*rows)
    return (
        torch.tensor(temperature, dtype=torch.float32, device=device),
        torch.tensor(top_k, dtype=torch.int32, device=device),
        torch.tensor(top_p, dtype=torch.float32, device=device),
        torch.tensor(min_p, dtype=torch.float32, device=device),
    )


def random_seeds(n, generator, device=DEVICE):
    seeds = torch.randint(-(2**62), 2**62, (n,), generator=generator, dtype=torch.int64).to(device)
    steps = torch.randint(0, 2**40, (n,), generator=generator, dtype=torch.int64).to(device)
    return seeds, steps


# Every combination of the filters (top_k, top_p, min_p), one row each; MIXED_ROWS adds greedy rows.
FILTER_ROWS = [
    (t, k, p, mp)
    for (k, p, mp), t in zip(
        itertools.product([0, 7], [1.0, 0.8], [0.0, 0.05]), [1.0, 0.7, 1.3, 0.6, 1.0, 2.0, 0.9, 0.5]
    )
]
MIXED_ROWS = [(0.0, 0, 1.0, 0.0), (0.6, 20, 0.95, 0.0), (1.0, 0, 1.0, 0.0), (0.0, 5, 0.5, 0.1),
              (1.0, 1, 1.0, 0.0), (0.8, 0, 0.3, 0.0), (1.0, 100000, 1.0, 0.2), (1.5, 64, 0.99, 0.01)]


@pytest.mark.parametrize("vocab_size", [1000, 4099])
@pytest.mark.parametrize("rows", [FILTER_ROWS, MIXED_ROWS], ids=["filters", "mixed"])
def test_kernel_matches_reference(vocab_size, rows):
    check_kernel_matches_reference(vocab_size, rows)


def test_kernel_matches_reference_on_each_merge_path(merge_path):
    # The interpreter uses 1024-logit splits (several per row here), the GPU 4096 (one at V=1000).
    check_kernel_matches_reference(2500 if DEVICE == "cpu" else 1000, MIXED_ROWS[1:] + FILTER_ROWS[2:5])


def check_kernel_matches_reference(vocab_size, rows):
    gen = torch.Generator().manual_seed(vocab_size)
    logits = (torch.randn(len(rows), vocab_size, generator=gen) * 3).to(DEVICE)
    params = make_params(rows)
    for _ in range(2):
        seeds, steps = random_seeds(len(rows), gen)
        expected = sample_tokens_reference(logits, *params, seeds, steps)
        assert torch.equal(sample_tokens_triton(logits, *params, seeds, steps), expected)
        assert torch.equal(sample_tokens(logits, *params, seeds, steps), expected)  # dispatcher


def test_kernel_matches_reference_with_ties_and_masked_vocab():
    gen = torch.Generator().manual_seed(1)
    # Logits on a coarse grid: many exact ties, also at the k-th value and at the top-p crossing.
    logits = (torch.randn(6, 1500, generator=gen) * 4).round() / 2
    logits[1, 700:] = float("-inf")  # a masked vocabulary
    logits[4, :] = float("-inf")
    logits[4, 3] = 0.0
    logits = logits.to(DEVICE)
    rows = [(1.0, 10, 1.0, 0.0), (1.0, 0, 0.9, 0.0), (0.5, 3, 0.7, 0.0), (1.0, 50, 0.6, 0.1), (1.0, 5, 0.9, 0.0),
            (0.0, 0, 1.0, 0.0)]
    params = make_params(rows)
    keep = kept_tokens_reference(logits, *params)
    sorted_logits = logits.sort(dim=-1, descending=True).values
    assert keep[0].sum() == (logits[0] >= sorted_logits[0, 9]).sum() > 10  # all ties of the 10th kept
    for _ in range(3):
        seeds, steps = random_seeds(len(rows), gen)
        tokens = sample_tokens_triton(logits, *params, seeds, steps)
        assert torch.equal(tokens, sample_tokens_reference(logits, *params, seeds, steps))
    assert tokens[1] < 700 and tokens[4] == 3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_logits_sample_as_their_fp32_upcast(dtype):
    """The kernels upcast on load and the reference upcasts first: exact, so the same tokens."""
    gen = torch.Generator().manual_seed(9)
    logits = (torch.randn(len(MIXED_ROWS), 4099, generator=gen) * 3).to(dtype).to(DEVICE)
    params = make_params(MIXED_ROWS)
    seeds, steps = random_seeds(len(MIXED_ROWS), gen)
    want = sample_tokens_reference(logits.float(), *params, seeds, steps)
    for impl in (sample_tokens_triton, sample_tokens_reference):
        assert torch.equal(impl(logits, *params, seeds, steps), want)


def test_greedy_is_first_argmax_and_all_greedy_flag():
    logits = torch.randn(4, 5000, generator=torch.Generator().manual_seed(2))
    logits[0, [5, 17, 2999]] = 50.0  # tied maximum: the first index wins
    logits[2, [4095, 4096]] = 50.0  # tied across the kernel's split boundary
    logits = logits.to(DEVICE)
    params = make_params([(0.0, 0, 1.0, 0.0), (1e-6, 3, 0.5, 0.5), (0.0, 0, 1.0, 0.0), (0.0, 1, 0.1, 0.9)])
    seeds, steps = torch.arange(4, device=DEVICE), torch.zeros(4, dtype=torch.int64, device=DEVICE)
    expected = logits.argmax(dim=-1)
    assert expected[0] == 5 and expected[2] == 4095
    for impl in (sample_tokens_triton, sample_tokens_reference):
        assert torch.equal(impl(logits, *params, seeds, steps), expected)
        assert torch.equal(impl(logits, *params, seeds, steps, all_greedy=True), expected)


def test_same_seed_and_step_reproduce_and_batch_does_not_matter():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 1000, generator=gen).to(DEVICE)  # flat: draws vary a lot
    params = make_params([(1.0, 0, 1.0, 0.0)] * 4 + [(1.0, 50, 0.9, 0.0)] * 4)
    seeds, steps = random_seeds(8, gen)
    first = sample_tokens_triton(logits, *params, seeds, steps)
    assert torch.equal(sample_tokens_triton(logits, *params, seeds, steps), first)
    alone = sample_tokens_triton(logits[5:6], *(p[5:6] for p in params), seeds[5:6], steps[5:6])
    assert alone.item() == first[5].item()
    # Reference over many rows: a new step (or seed) gives a new, independent draw.
    many = logits[:1].expand(2000, -1)
    many_params = make_params([(1.0, 0, 1.0, 0.0)] * 2000)
    seeds, steps = random_seeds(2000, gen)
    draws = sample_tokens_reference(many, *many_params, seeds, steps)
    assert (draws != sample_tokens_reference(many, *many_params, seeds, steps + 1)).float().mean() > 0.95
    assert (draws != sample_tokens_reference(many, *many_params, seeds + 1, steps)).float().mean() > 0.95


def brute_force_kept(logits, temperature, top_k, top_p, min_p):
    """The filters spelled out token by token, for one row."""
    V = logits.numel()
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    keep = torch.ones(V, dtype=torch.bool)
    if 0 < top_k < V:
        keep &= torch.tensor([(logits > logits[i]).sum() < top_k for i in range(V)])
    if top_p < 1:
        kept_probs = torch.where(keep, probs, 0.0) / torch.where(keep, probs, 0.0).sum()
        keep &= torch.tensor([kept_probs[kept_probs > kept_probs[i]].sum() < top_p for i in range(V)])
    if min_p > 0:
        keep &= probs >= min_p * probs.max()
    return keep


def test_kept_set_matches_definition_and_draws_stay_inside():
    gen = torch.Generator().manual_seed(4)
    logits = (torch.randn(6, 300, generator=gen) * 2).to(DEVICE)
    rows = [(1.0, 12, 1.0, 0.0), (0.7, 0, 0.6, 0.0), (1.0, 0, 1.0, 0.08), (1.2, 40, 0.8, 0.0), (0.9, 30, 0.9, 0.02),
            (1.0, 0, 1.0, 0.0)]
    params = make_params(rows)
    keep = kept_tokens_reference(logits, *params)
    for b, row in enumerate(rows):
        assert torch.equal(keep[b].cpu(), brute_force_kept(logits[b].cpu(), *row)), row
        assert 1 <= keep[b].sum() < 300 or row[1:] == (0, 1.0, 0.0)
    # Many draws per row: the reference always inside the set and reaching most of it.
    n = 3000
    many_logits = logits.repeat_interleave(n, dim=0)
    many_params = [p.repeat_interleave(n) for p in params]
    seeds, steps = random_seeds(6 * n, gen)
    draws = sample_tokens_reference(many_logits, *many_params, seeds, steps).view(6, n)
    assert keep.gather(1, draws).all()
    for b in range(5):
        assert draws[b].unique().numel() >= min(keep[b].sum().item(), 10)
    # Fewer draws for the kernel (interpreter speed), same check.
    idx = torch.arange(6, device=DEVICE).repeat_interleave(8)
    seeds, steps = random_seeds(48, gen)
    tokens = sample_tokens_triton(logits[idx], *(p[idx] for p in params), seeds, steps)
    assert keep[idx].gather(1, tokens[:, None]).all()


@pytest.mark.parametrize("row", [(0.8, 0, 1.0, 0.0), (1.0, 3, 1.0, 0.0), (1.0, 0, 0.7, 0.0), (1.0, 0, 1.0, 0.2)])
def test_draw_distribution_matches_kept_softmax(row):
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0]])
    n = 40000
    params = make_params([row] * n, "cpu")
    seeds, steps = random_seeds(n, torch.Generator().manual_seed(5), "cpu")
    draws = sample_tokens_reference(logits.expand(n, -1), *params, seeds, steps)
    keep = kept_tokens_reference(logits, *make_params([row], "cpu"))[0]
    expected = torch.softmax(logits[0] / row[0], dim=-1) * keep
    expected = expected / expected.sum() * n
    observed = torch.bincount(draws, minlength=8).double()
    assert (observed[~keep] == 0).all()
    chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    assert chi2 < 30.0, (chi2, observed, expected)  # 30 ~ p = 1e-4 at <= 7 degrees of freedom


def test_compute_logprobs():
    logits = torch.randn(3, 500, generator=torch.Generator().manual_seed(8)) * 5
    token_ids = torch.tensor([0, 17, 499])
    token_logprobs, top_ids, top_logprobs = compute_logprobs(logits, token_ids, 5)
    expected = torch.log_softmax(logits.double(), dim=-1)
    assert torch.allclose(token_logprobs.double(), expected[torch.arange(3), token_ids], atol=1e-5)
    assert torch.equal(top_ids, expected.topk(5, dim=-1).indices)
    assert torch.allclose(top_logprobs.double(), expected.topk(5, dim=-1).values, atol=1e-5)
    _, top_ids, top_logprobs = compute_logprobs(logits, token_ids, 0)
    assert top_ids.shape == (3, 0) and top_logprobs.shape == (3, 0)


# --------------------------------------------------------------------------------------- GPU
QWEN_VOCAB = 151936


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("batch", [1, 32, 256])
def test_gpu_sampling_matches_reference(batch):
    gen = torch.Generator().manual_seed(batch)
    logits = (torch.randn(batch, QWEN_VOCAB, generator=gen) * 3).cuda()
    rows = (MIXED_ROWS + FILTER_ROWS + [(0.6, 20, 0.95, 0.0), (1.0, 1000, 0.99, 0.0)]) * (batch // 18 + 1)
    params = make_params(rows[:batch], "cuda")
    for _ in range(3):
        seeds, steps = random_seeds(batch, gen, "cuda")
        expected = sample_tokens_reference(logits, *params, seeds, steps)
        assert torch.equal(sample_tokens(logits, *params, seeds, steps), expected)
