"""Token sampling and logprobs (penalties: ops/penalties.py).

Every per-row parameter is a device tensor and nothing branches on tensor values on the host,
so one decode step (penalties + sampling) can be captured in a CUDA graph.

Sampling (vLLM/HF order): greedy rows (temperature < 1e-5) take ``torch.argmax``; the others
scale by 1/temperature, keep the top_k largest (all ties of the k-th value), then the smallest
set of most likely tokens whose renormalised mass reaches top_p (all ties of the crossing token),
then drop tokens below min_p * max probability. top-k and top-p both keep ``logit >= threshold``:
the reference finds the threshold with a sort, the kernels without one. A first kernel summarises
8192-logit splits of every row in parallel (max, softmax sum, and per row kind: the first argmax,
the Gumbel-max, or the split's largest logits as candidates); a second merges them per row. The
kept set usually lies among the candidates (exact ranks and masses above the highest split
floor); when it does not (near-flat distributions, large top_k) that row's program searches the
threshold over the whole row in a few multi-pivot passes, which is much slower (~1 ms at V=152k).

The draw is a Gumbel-max: token = argmax over kept i of ``logit_i / T - log(-log(u_i))``
(the same argmax as p_i / E_i with E_i = -log u_i), with u from ops/hash_random.py: it depends
on (seed, step, i) only, not on the batch or the device.

Kernel and reference agree token for token except where fp32 rounding decides: a cumulative
mass within rounding of top_p (the sums run in a different order), a probability within rounding
of min_p * max, two Gumbel scores within an ulp (log implementations differ). Ties never matter:
both keep every tied token and both take the first index of an exactly tied maximum.
Logits (fp32, or bf16/fp16 as the LM head writes them: both sides upcast on read, exactly) must be
finite or -inf.
"""

import torch
import triton
import triton.language as tl

from ember.ops.argmax import argmax_rows_triton
from ember.ops.dispatch import use_triton
from ember.ops.hash_random import random_uniform_reference, row_keys, uniform

GREEDY_TEMPERATURE = tl.constexpr(1e-5)


# -------------------------------------------------------------------------- sampling: reference
def kept_tokens_reference(logits, temperature, top_k, top_p, min_p) -> torch.Tensor:
    """bool [B, V]: the tokens a non-greedy row may draw after top-k, top-p and min-p."""
    logits = logits.float()
    V = logits.shape[-1]
    inv_t = 1.0 / torch.where(temperature < GREEDY_TEMPERATURE.value, 1.0, temperature)
    probs = torch.softmax(logits * inv_t[:, None], dim=-1)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    k = torch.where((top_k > 0) & (top_k < V), top_k, V).to(torch.int64)
    kth = sorted_logits.gather(1, (k - 1)[:, None])  # every logit >= the k-th is kept
    sorted_probs = probs.gather(1, order).masked_fill(sorted_logits < kth, 0.0)
    cumulative = sorted_probs.cumsum(dim=-1)
    mass_before = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=-1)
    # The crossing token is the last one whose predecessors hold less than top_p of the mass.
    n_top_p = (mass_before < top_p[:, None] * cumulative[:, -1:]).sum(-1).clamp(min=1)
    crossing = sorted_logits.gather(1, (n_top_p - 1)[:, None])
    threshold = torch.where((top_p < 1.0)[:, None], torch.maximum(kth, crossing), kth)
    keep = logits >= threshold
    return keep & (probs >= min_p[:, None] * probs.amax(dim=-1, keepdim=True))


def sample_tokens_reference(logits, temperature, top_k, top_p, min_p, seeds, steps, all_greedy: bool = False):
    """int64 [B]: see the module docstring. ``all_greedy`` (a host flag) skips the sampling."""
    logits = logits.float()  # exact: any 16-bit logit is an fp32 one (the kernels upcast on load)
    greedy_tokens = logits.argmax(dim=-1)
    if all_greedy:
        return greedy_tokens
    keep = kept_tokens_reference(logits, temperature, top_k, top_p, min_p)
    inv_t = 1.0 / torch.where(temperature < GREEDY_TEMPERATURE.value, 1.0, temperature)
    gumbel = -torch.log(-torch.log(random_uniform_reference(seeds, steps, logits.shape[-1])))
    scores = (logits * inv_t[:, None] + gumbel).masked_fill(~keep, float("-inf"))
    return torch.where(temperature < GREEDY_TEMPERATURE.value, greedy_tokens, scores.argmax(dim=-1))


# ----------------------------------------------------------------------------- sampling: kernel
# Tuned on an H200 at V=151936 (B = 1, 32, 256). Candidates: a power of two (tests force both paths).
_CANDIDATES_PER_SPLIT = 32
_SPLIT_SIZE = 8192  # logits per summary program on GPU
_FALLBACK_BLOCK = 4096  # logits per step of the full-row search
_NUM_WARPS = 8


@triton.jit
def _float_key(f):
    # int32 whose signed order is the float order (-0.0 and +0.0 share the key of +0.0).
    bits = tl.where(f == 0.0, 0.0, f).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _key_float(key):
    return (key ^ ((key >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _find_threshold(row_ptr, V, lo, hi, count_lo, mass_lo, k_target, mass_target, m, scale,
                    BLOCK: tl.constexpr, NUM_PIVOTS: tl.constexpr, MAX_PASSES: tl.constexpr):
    """Largest logit t of the row with count(x >= t) >= k_target or mass(x >= t) >= mass_target.

    Invariant: lo <= t < hi, count_lo / mass_lo are count / mass of x >= lo (mass: sum of
    exp((x - m) / T)). Each pass counts and weighs x >= p at NUM_PIVOTS pivots inside (lo, hi)
    and takes the min / max logit in [lo, hi), so the bracket shrinks NUM_PIVOTS + 1 times and
    snaps onto the data; it is done when [lo, hi) holds a single distinct value. Pivots are evenly
    spaced values (fast on real logit spreads) and, once values stop making progress, evenly
    spaced float keys (at most ~14 passes from any bracket). Chunks entirely below lo are skipped.
    """
    offs = tl.arange(0, BLOCK)
    steps = tl.arange(0, NUM_PIVOTS) + 1
    passes = 0
    done = 0
    count_hi = 0  # count of x >= hi; hi starts above the row's max
    while (done == 0) & (passes < MAX_PASSES):
        finite_lo = tl.maximum(lo, -1e38)  # lo may be -inf (masked vocabulary): use keys then
        pivots = finite_lo + (hi - finite_lo) * (steps.to(tl.float32) / (NUM_PIVOTS + 1))
        lo_key = _float_key(lo).to(tl.int64)
        hi_key = _float_key(hi).to(tl.int64)
        key_pivots = _key_float((lo_key + (hi_key - lo_key) * steps.to(tl.int64) // (NUM_PIVOTS + 1)).to(tl.int32))
        by_value = (passes < MAX_PASSES // 3) & (lo == finite_lo)
        by_value &= (tl.min(pivots, axis=0) > lo) & (tl.max(pivots, axis=0) < hi)
        pivots = tl.where(by_value, pivots, key_pivots)
        counts = tl.zeros([NUM_PIVOTS], dtype=tl.int32)
        masses = tl.zeros([NUM_PIVOTS], dtype=tl.float32)
        data_min = float("inf")
        data_max = -float("inf")
        next_x = tl.load(row_ptr + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
        for start in range(0, V, BLOCK):
            x = next_x
            next_ids = start + BLOCK + offs  # issued now, awaited next step: hides the load latency
            next_x = tl.load(row_ptr + next_ids, mask=next_ids < V, other=-float("inf")).to(tl.float32)
            if tl.max(x, axis=0) >= lo:
                inside = (x >= lo) & (x < hi)
                data_min = tl.minimum(data_min, tl.min(tl.where(inside, x, float("inf")), axis=0))
                data_max = tl.maximum(data_max, tl.max(tl.where(inside, x, -float("inf")), axis=0))
                above = x[None, :] >= pivots[:, None]  # padding is -inf, below every pivot
                weight = tl.exp2((x - m) * scale)
                counts += tl.sum(above.to(tl.int32), axis=1)
                masses += tl.sum(tl.where(above, weight[None, :], 0.0), axis=1)
        holds = (counts >= k_target) | (masses >= mass_target)  # true on a prefix of the pivots
        # No logit lies in [lo, data_min) or (data_max, hi): snap the new bracket onto the data.
        next_lo = tl.maximum(tl.max(tl.where(holds, pivots, lo), axis=0), data_min)
        next_hi = tl.minimum(tl.min(tl.where(holds, hi, pivots), axis=0), _key_float(_float_key(data_max) + 1))
        next_count_lo = tl.min(tl.where(holds, counts, count_lo), axis=0)
        next_count_hi = tl.max(tl.where(holds, count_hi, counts), axis=0)
        # Done when [lo, hi) held one distinct value (it is the threshold), or when the new
        # bracket holds one logit: then x >= next_lo already selects x >= threshold.
        converged = data_min == data_max
        done = (converged | (next_count_lo - next_count_hi <= 1)).to(tl.int32)
        count_lo = tl.where(converged, count_lo, next_count_lo)
        count_hi = tl.where(converged, count_hi, next_count_hi)
        mass_lo = tl.where(converged, mass_lo, tl.min(tl.where(holds, masses, mass_lo), axis=0))
        lo = tl.where(converged, data_min, next_lo)
        hi = tl.where(converged, hi, next_hi)
        passes += 1
    return lo, count_lo, mass_lo


@triton.jit
def _row_setup(row, temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr, V):
    temperature = tl.load(temperature_ptr + row)
    top_k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    min_p = tl.load(min_p_ptr + row)
    greedy = temperature < GREEDY_TEMPERATURE
    inv_t = tl.math.div_rn(tl.full([], 1.0, tl.float32), tl.where(greedy, 1.0, temperature))  # IEEE, as torch
    top_k_on = (top_k > 0) & (top_k < V)
    top_p_on = top_p < 1.0
    filtered = top_k_on | top_p_on | (min_p > 0.0)
    return greedy, filtered, inv_t, tl.where(top_k_on, top_k, V).to(tl.int32), top_k_on, top_p, top_p_on, min_p


@triton.jit
def _gumbel_argmax(x, ids, keep, inv_t, key1, key2, V):
    """(best score, its id) of x / T + Gumbel noise over ``keep``; ties go to the smaller id."""
    score = tl.where(keep, x * inv_t - tl.log(-tl.log(uniform(ids, key1, key2))), -float("inf"))
    best = tl.max(score, axis=0)
    return best, tl.min(tl.where(score == best, ids, V), axis=0)


@triton.jit
def _split_floor(x, valid, K_CAND: tl.constexpr, BINS: tl.constexpr):
    """The largest logit f of the split with at most K_CAND logits above it, to the resolution of
    BINS equal value bins between the split's min and max (-inf if the split fits whole)."""
    hi = tl.max(x, axis=0)
    hi = tl.where(hi > -float("inf"), hi, 0.0)  # an all -inf split: every bin 0, no candidates
    lo = tl.minimum(tl.min(tl.where(x > -float("inf"), x, float("inf")), axis=0), hi)
    span = tl.where(hi > lo, hi - lo, 1.0)
    # Monotone in x, so {bin >= j} is exactly {x > max of the bins below j}.
    bins = tl.minimum(tl.maximum((x - lo) * (BINS / span), 0.0), BINS - 1).to(tl.int32)
    counts = tl.histogram(tl.where(x > -float("inf"), bins, 0), BINS, mask=valid)
    at_or_above = tl.sum(counts, axis=0) - tl.cumsum(counts, axis=0) + counts
    first_bin = tl.sum((at_or_above > K_CAND).to(tl.int32), axis=0)
    return tl.max(tl.where(valid & (bins < first_bin), x, -float("inf")), axis=0)


@triton.jit
def _split_summary_kernel(
    logits_ptr, logits_stride, temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr, seeds_ptr, steps_ptr,
    split_stats_ptr, split_ids_ptr, cand_x_ptr, cand_id_ptr, V, S,
    BLOCK: tl.constexpr, K_CAND: tl.constexpr, BINS: tl.constexpr,
):
    """Summary of BLOCK logits of a row: for greedy rows the first argmax, for unfiltered rows the
    Gumbel-max, for filtered rows the split's max, min, softmax sum (relative to the split max),
    floor and every logit above the floor (<= K_CAND, with ids) as candidates. Nothing else is
    computed: at temperature > 0 without filters the split's reductions and an exp2 per logit
    cost as much as the draw itself."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    slot = row.to(tl.int64) * S + split
    ids = split * BLOCK + tl.arange(0, BLOCK)
    valid = ids < V
    x = tl.load(logits_ptr + row.to(tl.int64) * logits_stride + ids, mask=valid, other=-float("inf")).to(tl.float32)
    greedy, filtered, inv_t, _, _, _, _, _ = _row_setup(row, temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr, V)
    stats = split_stats_ptr + slot * 5
    num_cand = 0
    if greedy | filtered:
        split_max = tl.max(x, axis=0)
        best = split_max
        best_id = tl.min(tl.where(x == split_max, ids, V), axis=0)  # greedy: the first argmax
        if filtered & (not greedy):
            floor = _split_floor(x, valid, K_CAND, BINS)
            take = valid & (x > floor)
            position = tl.cumsum(take.to(tl.int32), axis=0) - 1
            tl.store(cand_x_ptr + slot * K_CAND + position, x, mask=take)
            tl.store(cand_id_ptr + slot * K_CAND + position, ids, mask=take)
            num_cand = tl.sum(take.to(tl.int32), axis=0)
            # Only the merge of a filtered row reads the split's max, min, mass and floor.
            shifted = (x - tl.where(split_max == -float("inf"), 0.0, split_max)) * (inv_t * 1.4426950408889634)
            tl.store(stats + 0, split_max)
            tl.store(stats + 1, tl.min(tl.where(valid, x, float("inf")), axis=0))
            tl.store(stats + 2, tl.sum(tl.exp2(shifted), axis=0))
            tl.store(stats + 3, floor)
    else:  # an unfiltered draw needs only the split's best Gumbel score (the offline benchmark's rows)
        key1, key2 = row_keys(tl.load(seeds_ptr + row), tl.load(steps_ptr + row))
        best, best_id = _gumbel_argmax(x, ids, valid, inv_t, key1, key2, V)
    tl.store(stats + 4, best)
    tl.store(split_ids_ptr + slot * 2 + 0, best_id)
    tl.store(split_ids_ptr + slot * 2 + 1, num_cand)


@triton.jit
def _merge_kernel(
    logits_ptr, logits_stride, temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr, seeds_ptr, steps_ptr, out_ptr,
    split_stats_ptr, split_ids_ptr, cand_x_ptr, cand_id_ptr, V, S,
    S_PAD: tl.constexpr, K_CAND: tl.constexpr, PAIR_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
    NUM_PIVOTS: tl.constexpr, MAX_PASSES: tl.constexpr,
):
    """One row's token from its split summaries.

    Filtered rows: every logit above ``floor`` (the highest split floor) is a candidate, so a
    candidate's rank and the mass above it, counted over the candidates, are exact when it lies
    above the floor. If top-k / top-p drop some candidate above the floor (or min_p cuts above
    it), the kept set is exactly the kept candidates. Otherwise (flat distributions, large top_k)
    fall back to searching the full row (_find_threshold), in this one program.
    """
    row = tl.program_id(0)
    greedy, filtered, inv_t, k_target, top_k_on, top_p, top_p_on, min_p = _row_setup(
        row, temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr, V)
    key1, key2 = row_keys(tl.load(seeds_ptr + row), tl.load(steps_ptr + row))
    scale = inv_t * 1.4426950408889634  # exp(y / T) = exp2(y * scale)
    row_slots = row.to(tl.int64) * S + tl.arange(0, S_PAD)
    in_row = tl.arange(0, S_PAD) < S
    stats = split_stats_ptr + row_slots * 5
    bests = tl.load(stats + 4, mask=in_row, other=-float("inf"))
    best = tl.max(bests, axis=0)
    token = tl.min(tl.where(in_row & (bests == best), tl.load(split_ids_ptr + row_slots * 2, mask=in_row), V), axis=0)
    if filtered & (not greedy):
        maxes = tl.load(stats + 0, mask=in_row, other=-float("inf"))  # stored for filtered rows only
        m = tl.max(maxes, axis=0)
        total = tl.sum(tl.load(stats + 2, mask=in_row, other=0.0) * tl.exp2((maxes - m) * scale), axis=0)
        floor = tl.max(tl.load(stats + 3, mask=in_row, other=-float("inf")), axis=0)
        # Candidate c sits at position c % K_CAND of split c // K_CAND.
        c = tl.arange(0, S_PAD * K_CAND)
        c_count = tl.load(split_ids_ptr + (row.to(tl.int64) * S + c // K_CAND) * 2 + 1, mask=c // K_CAND < S, other=0)
        c_valid = (c // K_CAND < S) & (c % K_CAND < c_count)
        cand_ptr = row.to(tl.int64) * S * K_CAND + c
        cand_x = tl.load(cand_x_ptr + cand_ptr, mask=c_valid, other=-float("inf"))
        cand_e = tl.exp2((cand_x - m) * scale)
        # Rank (count above) and mass above of every candidate: only candidates above the floor
        # count, so pack them at the front of this row's candidate buffer (already in registers).
        above_floor = c_valid & (cand_x > floor)
        num_above = tl.sum(above_floor.to(tl.int32), axis=0)
        packed_ptr = cand_x_ptr + row.to(tl.int64) * S * K_CAND
        tl.debug_barrier()  # every thread has read the buffer
        tl.store(packed_ptr + tl.cumsum(above_floor.to(tl.int32), axis=0) - 1, cand_x, mask=above_floor)
        tl.debug_barrier()  # the packed values are visible to every thread
        rank = tl.zeros([S_PAD * K_CAND], dtype=tl.int32)
        mass_above = tl.zeros([S_PAD * K_CAND], dtype=tl.float32)
        for start in range(0, num_above, PAIR_BLOCK):
            o = start + tl.arange(0, PAIR_BLOCK)
            o_x = tl.load(packed_ptr + o, mask=o < num_above, other=-float("inf"))
            higher = o_x[:, None] > cand_x[None, :]
            rank += tl.sum(higher.to(tl.int32), axis=0)
            mass_above += tl.sum(tl.where(higher, tl.exp2((o_x - m) * scale)[:, None], 0.0), axis=0)
        in_top_k = rank < k_target
        top_k_mass = tl.where(top_k_on, tl.sum(tl.where(above_floor & in_top_k, cand_e, 0.0), axis=0), total)
        keep = in_top_k & (mass_above < tl.where(top_p_on, top_p * top_k_mass, float("inf")))
        # The top-k mass is exact when top-k drops a candidate above the floor (so the k-th value is
        # above it); the kept set is the kept candidates when something above the floor is dropped.
        everything = floor == -float("inf")
        k_cuts_above = tl.max((above_floor & ~in_top_k).to(tl.int32), axis=0) == 1
        cuts_above = (tl.max((above_floor & ~keep).to(tl.int32), axis=0) == 1) | (tl.exp2((floor - m) * scale) < min_p)
        if ((not top_k_on) | (not top_p_on) | k_cuts_above | everything) & (cuts_above | everything):
            keep = keep & above_floor & (cand_e >= min_p)
            cand_id = tl.load(cand_id_ptr + cand_ptr, mask=c_valid, other=0)
            best, token = _gumbel_argmax(cand_x, cand_id, keep, inv_t, key1, key2, V)
        else:
            row_ptr = logits_ptr + row.to(tl.int64) * logits_stride
            lo = tl.min(tl.load(stats + 1, mask=in_row, other=float("inf")), axis=0)
            count_lo = V
            mass_lo = total
            hi = _key_float(_float_key(m) + 1)
            if top_k_on & top_p_on:  # the k-th value first: top-p needs the top-k mass
                lo, count_lo, mass_lo = _find_threshold(row_ptr, V, lo, hi, count_lo, mass_lo, k_target,
                                                        float("inf"), m, scale, BLOCK, NUM_PIVOTS, MAX_PASSES)
            if top_k_on | top_p_on:
                lo, count_lo, mass_lo = _find_threshold(row_ptr, V, lo, hi, count_lo, mass_lo, k_target,
                                                        tl.where(top_p_on, top_p * mass_lo, float("inf")),
                                                        m, scale, BLOCK, NUM_PIVOTS, MAX_PASSES)
            best = -float("inf")
            for start in range(0, V, BLOCK):  # only chunks reaching the threshold draw noise
                chunk_ids = start + tl.arange(0, BLOCK)
                chunk = tl.load(row_ptr + chunk_ids, mask=chunk_ids < V, other=-float("inf")).to(tl.float32)
                if tl.max(chunk, axis=0) >= lo:
                    chunk_keep = (chunk_ids < V) & (chunk >= lo) & (tl.exp2((chunk - m) * scale) >= min_p)
                    chunk_best, chunk_token = _gumbel_argmax(chunk, chunk_ids, chunk_keep, inv_t, key1, key2, V)
                    token = tl.where(chunk_best > best, chunk_token, token)
                    best = tl.maximum(best, chunk_best)
    tl.store(out_ptr + row, token.to(tl.int64))


def sample_tokens_triton(logits, temperature, top_k, top_p, min_p, seeds, steps, all_greedy: bool = False):
    if all_greedy:
        return argmax_rows_triton(logits)  # nothing else to do
    B, V = logits.shape
    assert logits.dtype in (torch.float32, torch.bfloat16, torch.float16) and logits.stride(1) == 1
    # One split per program; small on CPU so that the tests run several splits per row.
    block = min(triton.next_power_of_2(V), _SPLIT_SIZE if logits.is_cuda else 1024)
    S = triton.cdiv(V, block)
    k_cand = _CANDIDATES_PER_SPLIT
    device = logits.device
    out = torch.empty(B, dtype=torch.int64, device=device)
    split_stats = torch.empty(B, S, 5, dtype=torch.float32, device=device)
    split_ids = torch.empty(B, S, 2, dtype=torch.int32, device=device)
    cand_x = torch.empty(B, S, k_cand, dtype=torch.float32, device=device)
    cand_id = torch.empty(B, S, k_cand, dtype=torch.int32, device=device)
    row_params = (temperature.contiguous(), top_k.contiguous(), top_p.contiguous(), min_p.contiguous(),
                  seeds.to(torch.int64).contiguous(), steps.to(torch.int64).contiguous())
    # No FMA contraction: scores and masses round like the reference's separate ops.
    _split_summary_kernel[(B, S)](
        logits, logits.stride(0), *row_params, split_stats, split_ids, cand_x, cand_id, V, S,
        BLOCK=block, K_CAND=k_cand, BINS=256, num_warps=_NUM_WARPS, enable_fp_fusion=False,
    )
    _merge_kernel[(B,)](
        logits, logits.stride(0), *row_params, out, split_stats, split_ids, cand_x, cand_id, V, S,
        S_PAD=triton.next_power_of_2(S), K_CAND=k_cand, PAIR_BLOCK=16 if logits.is_cuda else 64,
        BLOCK=min(block, _FALLBACK_BLOCK), NUM_PIVOTS=4, MAX_PASSES=48, num_warps=8, enable_fp_fusion=False,
    )
    return out


def sample_tokens(logits, temperature, top_k, top_p, min_p, seeds, steps, all_greedy: bool = False):
    impl = sample_tokens_triton if use_triton(logits) else sample_tokens_reference
    return impl(logits, temperature, top_k, top_p, min_p, seeds, steps, all_greedy)


# ------------------------------------------------------------------------------------ logprobs
def compute_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, num_top: int):
    """Log-probabilities of the raw ``logits``: (of token_ids [B], top ids [B, n], top values [B, n])."""
    logprobs = torch.log_softmax(logits.to(torch.float32), dim=-1)
    token_logprobs = logprobs.gather(1, token_ids.to(torch.int64)[:, None]).squeeze(1)
    top_logprobs, top_ids = logprobs.topk(num_top, dim=-1)
    return token_logprobs, top_ids, top_logprobs
