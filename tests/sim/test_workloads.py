import pytest

from pipedecode.sim import workloads as wl


def test_sharegpt_shaped_lengths_are_seeded_and_filtered_as_vllm_filters_sharegpt():
    a, b = wl.sharegpt_shaped(2000, seed=3), wl.sharegpt_shaped(2000, seed=3)
    assert a == b and a != wl.sharegpt_shaped(2000, seed=4)
    assert min(a.prompt_lens) >= 4 and min(a.output_lens) >= 4
    assert max(a.prompt_lens) <= 1024
    assert max(p + o for p, o in zip(a.prompt_lens, a.output_lens)) <= 2048
    # the filter cuts the long tails, so the means fall a little below ShareGPT's 161 and 338
    summary = a.summary()
    assert 120 < summary["mean_prompt_tokens"] < 161
    assert 290 < summary["mean_output_tokens"] < 338


def test_specs_make_the_workloads_they_name():
    u = wl.make_workload("uniform:10:20:3:5", 500, seed=1)
    assert u.spec == "uniform:10:20:3:5" and u.num_requests == 500
    assert set(u.prompt_lens) == set(range(10, 21)) and set(u.output_lens) == {3, 4, 5}
    f = wl.make_workload("fixed:7:9", 3)
    assert f.prompt_lens == (7, 7, 7) and f.output_lens == (9, 9, 9)
    assert wl.make_workload("sharegpt", 5, seed=2) == wl.sharegpt_shaped(5, seed=2)


@pytest.mark.parametrize("spec", ["sharegpt:1", "uniform:1:2:3", "fixed:a:b", "zipf", ""])
def test_bad_specs_name_themselves_and_the_forms_allowed(spec):
    with pytest.raises(ValueError, match="cannot read workload"):
        wl.make_workload(spec, 10)


def test_bad_counts_and_ranges_are_refused():
    with pytest.raises(ValueError, match="positive number of requests"):
        wl.sharegpt_shaped(0)
    with pytest.raises(ValueError, match="lo <= hi"):
        wl.uniform(3, (5, 2), (1, 1))


def test_prompts_are_distinct_and_of_the_workload_lengths():
    with pytest.raises(ValueError, match="leaves no ids"):
        wl.fixed(5, 1, 4).prompts(vocab_size=4)
    with pytest.raises(ValueError, match="50 distinct prompts of 1 tokens"):
        wl.fixed(50, 1, 4).prompts(vocab_size=16)      # 13 ids
    w = wl.uniform(200, (1, 3), (1, 2), seed=5)
    prompts = w.prompts(vocab_size=1000)
    assert [len(p) for p in prompts] == list(w.prompt_lens)
    assert len({tuple(p) for p in prompts}) == 200
    assert min(min(p) for p in prompts) >= 3 and max(max(p) for p in prompts) < 1000
    assert prompts == w.prompts(vocab_size=1000)


def test_replica_shares_take_every_rth_request():
    w = wl.uniform(10, (1, 100), (1, 100))
    parts = [w.requests(r, 3) for r in range(3)]
    assert sum(p.num_requests for p in parts) == 10
    assert parts[1].prompt_lens == w.prompt_lens[1::3]
