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
