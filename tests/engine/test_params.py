import pytest

from pipedecode.engine.params import (DEFAULT_MAX_TOKENS, CompletionOutput, RequestMetrics,
                                      SamplingParams)


def test_defaults_are_vllms():
    p = SamplingParams()
    assert p.max_tokens == DEFAULT_MAX_TOKENS == 16
    assert (p.temperature, p.top_p, p.top_k, p.seed, p.ignore_eos) == (1.0, 1.0, 0, None, False)
    assert not p.greedy and SamplingParams(temperature=0).greedy


@pytest.mark.parametrize("field, value", [
    ("max_tokens", 0), ("max_tokens", -3), ("max_tokens", 2.5), ("max_tokens", True),
    ("temperature", -0.1), ("temperature", float("nan")), ("top_p", 0.0), ("top_p", 1.5),
    ("top_k", -2), ("top_k", 1.5), ("seed", "7"), ("stop_token_ids", [-1]),
    ("stop_token_ids", ["a"]), ("stop", [""]), ("stop", [3]), ("ignore_eos", 1),
])
def test_bad_fields_are_named(field, value):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
        SamplingParams(**{field: value})


def test_normalised_forms():
    p = SamplingParams(top_k=-1, stop="###", stop_token_ids=[5, 6])
    assert p.top_k == 0 and p.stop == ("###",) and p.stop_token_ids == (5, 6)
    assert SamplingParams(stop=None, stop_token_ids=7).stop_token_ids == (7,)
    assert hash(p) == hash(SamplingParams(top_k=0, stop=["###"], stop_token_ids=(5, 6)))


def test_metrics_and_completion():
    m = RequestMetrics(10.0, 10.5, 12.0, preemptions=1)
    assert m.time_to_first_token_s == 0.5 and m.latency_s == 2.0
    assert RequestMetrics(1.0, None, None).latency_s is None
    assert CompletionOutput(0, None, (1, 2), "length").finished()
    assert not CompletionOutput(0, None, (), None).finished()
    with pytest.raises(ValueError, match="finish_reason"):
        CompletionOutput(0, None, (), "eos")
