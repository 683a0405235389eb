import random

import pytest

from pipedecode.errors import PlanningError
from pipedecode.planner import Schedule, build_problem, plan, solve
from pipedecode.profiles import DeviceProfile
from pipedecode.profiles.analytic import BUILTIN


def test_interleaved_plan_is_consistent(llama8b):
    schedule = plan(llama8b, BUILTIN["h200"], [512] * 384 + [2048] * 128)
    assert schedule.mode == "interleaved"
    assert schedule.memory_sms + schedule.compute_sms == 132
    assert schedule.memory_sms in BUILTIN["h200"].partition_sizes()
    ids = sorted(i for m in schedule.micro_batches for i in m.request_ids)
    assert ids == list(range(512))
    assert schedule.roofline_floor_us < schedule.predicted_step_us < schedule.sequential_step_us
    # phase j: attention of j on the memory partition beside post/pre_attn of j-1
    phase0 = [(s.stage, s.micro_batch, s.partition) for s in schedule.slots if s.phase == 0]
    assert phase0 == [("attention", 0, "memory"), ("post_attn", 1, "compute"),
                      ("pre_attn", 1, "compute")]
    assert [(s.stage, s.micro_batch) for s in schedule.prologue] == [("pre_attn", 0)]
    assert [(s.stage, s.micro_batch) for s in schedule.epilogue] == [("post_attn", 1)]


def test_three_micro_batches_cycle(llama8b):
    schedule = plan(llama8b, BUILTIN["h200"], [512] * 432 + [2048] * 144,
                    num_micro_batches=3)
    assert schedule.mode == "interleaved" and len(schedule.micro_batches) == 3
    # phase j: attention of j beside post/pre_attn of (j + 1) % 3, as the executor runs it
    pairs = [(s.phase, s.micro_batch, s.layer_offset) for s in schedule.slots
             if s.stage == "post_attn"]
    assert pairs == [(0, 1, -1), (1, 2, -1), (2, 0, 0)]
    assert [s.micro_batch for s in schedule.prologue] == [0]
    assert [s.micro_batch for s in schedule.epilogue] == [1, 2]
    assert schedule.predicted_step_us <= schedule.sequential_step_us


@pytest.mark.parametrize("micro_batches", [2, 3])
def test_the_runtime_accepts_the_slot_pattern(llama8b, micro_batches):
    from pipedecode.runtime.program import pattern_mismatch, stage_partitions

    schedule = plan(llama8b, BUILTIN["h200"], [512] * 432 + [2048] * 144,
                    num_micro_batches=micro_batches)
    assert schedule.mode == "interleaved"
    assert pattern_mismatch(schedule) is None
    assert stage_partitions(schedule)["attention"] == "memory"


def test_never_slower_than_sequential(llama8b):
    rng = random.Random(3)
    for device in BUILTIN.values():
        for batch in (1, 96):
            contexts = [rng.randint(64, 2048) for _ in range(batch)]
            roomy = DeviceProfile(**{**device.__dict__, "memory_bytes": 2 ** 41})  # speed only
            schedule = plan(llama8b, roomy, contexts)
            assert schedule.predicted_step_us <= schedule.sequential_step_us
            assert schedule.speedup >= 1.0


def test_a_big_corun_slowdown_forces_sequential(llama8b):
    slow = DeviceProfile(**{**BUILTIN["h200"].__dict__, "corun_slowdown": 3.0})
    schedule = plan(llama8b, slow, [512] * 384 + [2048] * 128)   # interleaved on BUILTIN h200
    assert schedule.mode == "sequential" and schedule.memory_sms == 0
    assert schedule.compute_sms == 132 and len(schedule.micro_batches) == 1
    assert schedule.predicted_step_us == schedule.sequential_step_us


def test_same_input_same_output(llama8b):
    contexts = [random.Random(5).randint(100, 3000) for _ in range(300)]
    problem = build_problem(llama8b, BUILTIN["h200"], contexts)
    assert solve(problem).to_json() == solve(problem).to_json()


def test_both_solvers_give_equally_good_schedules(llama8b):
    contexts = [512] * 384 + [2048] * 128
    a = plan(llama8b, BUILTIN["h200"], contexts)
    b = plan(llama8b, BUILTIN["h200"], contexts, solver="ortools")
    # the ILP optimum is shared (test_ilp); its ties may be broken differently, and the exact
    # re-pricing then lands within a percent
    assert a.mode == b.mode == "interleaved"
    assert a.predicted_step_us == pytest.approx(b.predicted_step_us, rel=0.01)


def test_kv_cache_that_does_not_fit_is_a_planning_error(llama8b):
    with pytest.raises(PlanningError, match="does not fit"):
        plan(llama8b, BUILTIN["rtx4090"], [8192] * 64)


def test_round_trip_of_a_planned_schedule(llama8b):
    schedule = plan(llama8b, BUILTIN["h100"], [300, 900, 2000, 4000] * 32)
    assert Schedule.from_json(schedule.to_json()) == schedule


# ---- co-resident mode: synthetic profiles with hand-made samples (conftest) ------------------
def test_coresident_is_chosen_where_its_samples_say_it_is_faster(llama8b, coresident_profile):
    from pipedecode.runtime.program import pattern_mismatch

    profile = coresident_profile(0.1)
    schedule = plan(llama8b, profile, [512] * 1024, memory_sms_options=())
    assert schedule.mode == "coresident" and schedule.attention_smem_bytes == 65536
    assert schedule.memory_sms == schedule.compute_sms == 132
    assert schedule.predicted_step_us < schedule.sequential_step_us
    assert schedule.mode_reason.startswith("coresident (attention within 64 KiB per SM)")
    assert pattern_mismatch(schedule) is None
    assert Schedule.from_json(schedule.to_json()) == schedule
    # against interleaved on the same profile, the faster prediction wins
    both = plan(llama8b, profile, [512] * 1024)
    assert both.mode == "coresident" and both.predicted_step_us <= schedule.predicted_step_us


def test_coresident_is_not_chosen_where_its_samples_say_it_is_slower(llama8b, coresident_profile):
    profile = coresident_profile(1.0, speed=1.3)
    schedule = plan(llama8b, profile, [512] * 1024, memory_sms_options=())
    assert schedule.mode == "sequential"
    assert "no overlapped mode is predicted faster" in schedule.mode_reason


def test_without_samples_coresident_cannot_be_priced_and_the_schedule_says_so(llama8b):
    schedule = plan(llama8b, BUILTIN["h200"], [512] * 1024, memory_sms_options=())
    assert schedule.mode == "sequential"
    assert "coresident not priced: the h200 profile has no co-resident samples" in \
        schedule.mode_reason
    with pytest.raises(PlanningError, match="no co-resident samples at"):
        build_problem(llama8b, BUILTIN["h200"], [512] * 8, coresident_options=(65536,))


def test_micro_batches_too_small_to_stay_compute_bound_are_refused(llama8b, coresident_profile):
    from pipedecode.planner.cost import CostModel, min_micro_batch_tokens
    from pipedecode.planner.ilp import build_split_lp

    profile = coresident_profile(0.0)
    fewest = min_micro_batch_tokens(profile)
    assert fewest == 180                           # 2 x 790 TFLOP/s / (4.39 TB/s x 2 bytes)
    small = plan(llama8b, profile, [512] * (2 * fewest - 2))
    assert small.mode == "sequential"
    assert f"fewer than {fewest}" in small.mode_reason and "compute_bound" in small.mode_reason
    problem = build_problem(llama8b, profile, [512] * 400, memory_sms_options=(48,))
    names = {c.name for c in build_split_lp(problem, CostModel(llama8b, profile)).constraints}
    assert {"compute_bound_mb0_co65536", "compute_bound_mb1_s48"} <= names
    big = plan(llama8b, profile, [512] * (2 * fewest + 2), memory_sms_options=())
    assert big.mode == "coresident" and min(mb.tokens for mb in big.micro_batches) >= fewest


# ---- the closed form: sequential without the ILP where its constraints admit nothing else --
def _closed_form_cases(llama8b, coresident_profile):
    from pipedecode.planner.cost import min_micro_batch_tokens

    h200, co = BUILTIN["h200"], coresident_profile(0.1)
    rng = random.Random(7)
    mixed = [rng.randint(16, 4096) for _ in range(2 * min_micro_batch_tokens(h200) - 1)]
    return [  # (profile, contexts, options, the ILP skipped)
        (h200, [256] * 2, {}, True),
        (h200, mixed, {}, True),                                    # one below 2 x fewest
        (h200, [512] * (2 * min_micro_batch_tokens(h200)), {}, False),   # at it: solved
        (h200, [512] * 384 + [2048] * 128, {}, False),              # interleaved
        (h200, [300] * 500, dict(num_micro_batches=3), True),       # 3 x 180 > 500
        (h200, [100], dict(min_micro_batch_tokens=0), True),        # one request
        (h200, [512] * 1024, dict(memory_sms_options=()), True),    # no option at all
        (co, [512] * (2 * min_micro_batch_tokens(co) - 2), {}, True),
        (co, [512] * 1024, dict(memory_sms_options=()), False),     # coresident
    ]


def test_the_closed_form_gives_the_ilps_schedule(llama8b, coresident_profile, monkeypatch):
    import pipedecode.planner.api as api

    solved = []
    real = api.solve_lp
    monkeypatch.setattr(api, "solve_lp", lambda *a, **k: solved.append(1) or real(*a, **k))
    modes = set()
    for profile, contexts, options, skipped in _closed_form_cases(llama8b, coresident_profile):
        problem = build_problem(llama8b, profile, contexts, **options)
        solved.clear()
        fast = solve(problem)
        assert len(solved) == (0 if skipped else 1), (len(contexts), options)
        ilp = solve(problem, closed_form=False)
        assert len(solved) == (1 if skipped else 2)
        assert fast == ilp, (len(contexts), options)           # mode, reason, every time
        assert fast.to_json() == ilp.to_json()
        assert fast.mode == "sequential" or not skipped
        modes.add(fast.mode)
    assert modes == {"sequential", "interleaved", "coresident"}


def test_an_over_budget_kv_cache_still_reaches_the_solver(llama8b):
    import dataclasses

    problem = build_problem(llama8b, BUILTIN["h200"], [512] * 4)
    over = dataclasses.replace(problem, kv_budget_bytes=problem.kv_bytes - 1)
    with pytest.raises(PlanningError, match="found no solution"):
        solve(over)


def test_coresident_turned_off_is_told_apart_from_a_profile_without_samples(llama8b,
                                                                            coresident_profile):
    off = plan(llama8b, coresident_profile(0.1), [512] * 64, coresident_options=())
    assert "coresident not priced: turned off (coresident_options=())" in off.mode_reason
    assert "no co-resident samples" not in off.mode_reason
