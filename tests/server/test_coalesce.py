"""A client that falls behind gets one chunk for several tokens: same text, same final state."""

from __future__ import annotations

from ember.engine.sequence import TokenLogprobs
from ember.server.async_engine import TokenEvent, coalesce


def ev(index, text, *, finished=False, logprobs=None, n=1):
    return TokenEvent(index=index, token_id=100 + n, text=text, logprobs=logprobs, finished=finished,
                      finish_reason="stop" if finished else None, num_prompt_tokens=5, num_output_tokens=n)


def test_runs_of_one_sequence_merge_and_keep_the_last_state():
    events = [ev(0, "Hel", n=1), ev(1, "A", n=1), ev(0, "lo", n=2), ev(1, "B", n=2), ev(0, "!", finished=True, n=3)]
    merged = coalesce(events)
    assert [(e.index, e.text, e.finished, e.num_output_tokens, e.token_id) for e in merged] == [
        (0, "Hello!", True, 3, 103), (1, "AB", False, 2, 102)]


def test_logprob_events_stay_one_per_token_and_order_is_kept():
    lp = TokenLogprobs(7, -0.5, {7: -0.5})
    events = [ev(0, "a", logprobs=lp, n=1), ev(0, "b", logprobs=lp, n=2), ev(0, "c", n=3), ev(0, "d", n=4)]
    assert [e.text for e in coalesce(events)] == ["a", "b", "cd"]
    assert coalesce([]) == []
    single = [ev(0, "x")]
    assert coalesce(single) == single
