import pytest

from ember.errors import InvalidRequestError
from ember.sampling_params import SamplingParams


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-0.1), dict(top_p=0), dict(top_p=1.5), dict(min_p=-1), dict(max_tokens=0),
     dict(presence_penalty=3), dict(frequency_penalty=-3), dict(repetition_penalty=0), dict(logprobs=21)],
)
def test_out_of_range_values_are_rejected(kwargs):
    with pytest.raises(InvalidRequestError):
        SamplingParams(**kwargs)


def test_defaults_and_normalisation():
    p = SamplingParams(temperature=0, stop="END")
    assert p.greedy and p.stop == ["END"] and not p.needs_penalties
    assert SamplingParams(repetition_penalty=1.1).needs_penalties


def test_huge_integers_keep_their_meaning_and_fit_the_device_tensors():
    """Found by the server fuzzer: top_k = 6.6e32 overflowed the int32 tensor mid-step."""
    assert SamplingParams(top_k=659333875424245638285081047990272).top_k == 0  # beyond any vocab: off
    assert SamplingParams(top_k=-(2**40)).top_k == 0 and SamplingParams(top_k=-1).top_k == -1
    assert SamplingParams(top_k=50).top_k == 50
    assert SamplingParams(seed=2**70).seed == 0 and SamplingParams(seed=2**63).seed == -(2**63)
    assert SamplingParams(seed=-5).seed == -5 and SamplingParams(seed=123).seed == 123


def test_huge_integers_generate_on_the_engine(tiny_checkpoint):
    from ember import LLM

    llm = LLM(str(tiny_checkpoint), dtype="float32", device="cpu", max_model_len=64, progress=False)
    huge = SamplingParams(temperature=0.8, top_k=10**33, seed=2**64 + 7, max_tokens=4, ignore_eos=True)
    plain = SamplingParams(temperature=0.8, top_k=0, seed=7, max_tokens=4, ignore_eos=True)
    got, want = (llm.generate(["Hello"], p, use_tqdm=False)[0].outputs[0].token_ids for p in (huge, plain))
    assert got == want and len(got) == 4
