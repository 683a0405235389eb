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


def test_weights_beyond_the_gpu_point_to_pipeline_parallelism():
    # Llama-3-70B in bf16: 131.4 GiB of weights, more than one H100 (79.2 GiB) or H200 holds
    with pytest.raises(PlanningError) as info:
        build_problem("llama-3-70b", BUILTIN["h100"], [1024])
    message = str(info.value)
    assert "131.4 GiB of weights" in message and "exceed the 79.2 GiB of one h100" in message
    assert "--pipeline-parallel 2" in message and "does not fit" not in message


@pytest.mark.parametrize("budget_gib, message", [
    (100, "the budget can be at most 64.2 GiB"),
    (-1, "must be a positive number of bytes"),
])
def test_kv_budgets_beyond_the_device_are_refused(llama8b, budget_gib, message):
    with pytest.raises(PlanningError, match=message):
        build_problem(llama8b, BUILTIN["h100"], [10], kv_budget_bytes=int(budget_gib * 2 ** 30))
    room = BUILTIN["h100"].memory_bytes - weight_bytes(llama8b)
    assert build_problem(llama8b, BUILTIN["h100"], [10], kv_budget_bytes=room).kv_budget_bytes \
        == room


def test_request_count_is_bounded_before_the_lengths_are_read(llama8b):
    from pipedecode.planner.problem import max_requests

    limit = max_requests(llama8b, BUILTIN["h100"])
    # 56.3 GiB left for the cache at 128 KiB a token: 461,240 requests of one token
    assert limit == int(BUILTIN["h100"].memory_bytes * 0.9 - weight_bytes(llama8b)) // 131072

    class Huge:                        # a length but no values: reading it would be the bug
        def __len__(self):
            return 10 ** 12

        def __iter__(self):
            raise AssertionError("the lengths were read before the count was checked")

    with pytest.raises(PlanningError, match=f"at most {limit:,} fit"):
        build_problem(llama8b, BUILTIN["h100"], Huge())
    build_problem(llama8b, BUILTIN["h100"], [0] * 1000)


def test_contexts_beyond_the_models_positions_are_refused(llama8b):
    from pipedecode.errors import WorkloadError

    build_problem("llama-3-8b", BUILTIN["h100"], [8191])          # + this step's token: 8192
    with pytest.raises(WorkloadError, match="8193 positions, beyond the 8192 of llama-3-8b"):
        build_problem("llama-3-8b", BUILTIN["h100"], [8192])
    build_problem(llama8b, BUILTIN["h100"], [9000])     # a bare ModelShape carries no limit...
    with pytest.raises(WorkloadError):                  # ...unless it is given
        build_problem(llama8b, BUILTIN["h100"], [9000], positions=8192)
    with pytest.raises(WorkloadError, match="remaining output"):
        build_problem("llama-3-8b", BUILTIN["h100"], [8000], remaining_output_lens=[500],
                      waiting=[(10, 10)])
    with pytest.raises(WorkloadError, match="waiting prompt plus its output"):
        build_problem("llama-3-8b", BUILTIN["h100"], [100], remaining_output_lens=[5],
                      waiting=[(8000, 500)])


@pytest.mark.parametrize("options, message", [
    (dict(num_micro_batches=100000), "at most 16"),
    (dict(num_micro_batches=1), "must be >= 2"),
    (dict(switch_cost_us=float("nan")), "switch_cost_us must be a finite number"),
])
def test_solver_sizes_and_costs_are_bounded(llama8b, options, message):
    with pytest.raises(PlanningError, match=message):
        build_problem(llama8b, BUILTIN["h100"], [10, 20], **options)
