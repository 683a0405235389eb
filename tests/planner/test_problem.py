import pytest

from pipedecode.errors import PlanningError
from pipedecode.models import PRESETS, model_shape
from pipedecode.planner.problem import build_problem, make_buckets, resolve_model, weight_bytes
from pipedecode.profiles.analytic import BUILTIN


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_shapes_without_transformers_match_model_shape(preset):
    assert resolve_model(preset) == model_shape(preset)


def test_buckets_group_equal_lengths_and_cap_the_count():
    ids = tuple(range(10))
    lens = (5, 1, 5, 3, 1, 9, 9, 9, 2, 3)
    buckets = make_buckets(ids, lens, 24)
    assert [b.context_lens[0] for b in buckets] == [1, 2, 3, 5, 9]
    assert sum(b.count for b in buckets) == 10
    capped = make_buckets(ids, lens, 2)
    assert len(capped) == 2 and sum(b.count for b in capped) == 10
    # one length never straddles two buckets
    seen = [set(b.context_lens) for b in capped]
    assert not seen[0] & seen[1]


def test_many_lengths_are_cut_into_at_most_max_buckets():
    ids = tuple(range(512))
    buckets = make_buckets(ids, tuple(100 + i for i in ids), 24)
    assert len(buckets) <= 24 and sum(b.count for b in buckets) == 512


def test_bad_workloads_are_planning_errors(llama8b):
    with pytest.raises(PlanningError, match="non-empty"):
        build_problem(llama8b, BUILTIN["h100"], [])
    with pytest.raises(PlanningError, match="not allowed"):
        build_problem(llama8b, BUILTIN["h100"], [10], memory_sms_options=(12,))
    with pytest.raises(PlanningError, match="distinct"):
        build_problem(llama8b, BUILTIN["h100"], [10, 10], request_ids=[1, 1])


def test_default_kv_budget_leaves_room_for_weights(llama8b):
    problem = build_problem(llama8b, BUILTIN["h100"], [10])
    # Llama-3-8B: 8.0e9 parameters in bf16 (embedding and head untied)
    assert weight_bytes(llama8b) == pytest.approx(16.06e9, rel=0.01)
    budget = int(problem.profile.memory_bytes * 0.9 - weight_bytes(llama8b))
    assert problem.kv_budget_bytes == budget
