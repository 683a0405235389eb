import random

import pytest

from pipedecode.planner.cost import CostModel
from pipedecode.planner.problem import build_problem
from pipedecode.planner.switch import Horizon, plan_switch, tdpipe_step
from pipedecode.profiles.analytic import BUILTIN

KV_PER_TOKEN = 131072   # Llama-3-8B


def _cliff(llama8b, switch_cost_us=1000.0, budget_tokens=None):
    # 8 requests of 1000 tokens: 6 finish after 20 steps, 2 after 200; 8 prompts wait
    return build_problem(llama8b, BUILTIN["h100"], [1000] * 8,
                         remaining_output_lens=[20] * 6 + [200] * 2,
                         waiting=[(1000, 200)] * 8, switch_cost_us=switch_cost_us,
                         kv_budget_bytes=None if budget_tokens is None
                         else budget_tokens * KV_PER_TOKEN)


def _switch(problem, solver="cbc"):
    return plan_switch(problem, CostModel(problem.model, problem.profile), solver)


def test_tdpipe_rule_switches_at_the_cliff(llama8b):
    problem = _cliff(llama8b)
    horizon = Horizon(problem, CostModel(problem.model, problem.profile))
    # intensity stays ~1 until 6 of 8 requests finish at step 20, then drops far below
    # (T_prefill - 1 ms) / T_prefill
    assert tdpipe_step(horizon) == 20


def test_tdpipe_rule_never_switches_when_the_bubble_exceeds_the_prefill(llama8b):
    problem = _cliff(llama8b, switch_cost_us=1e9)
    horizon = Horizon(problem, CostModel(problem.model, problem.profile))
    assert tdpipe_step(horizon) == horizon.steps == 200


def test_memory_decides_the_switch_when_nothing_fits_before_the_cliff(llama8b):
    # 9000 tokens of KV: before step 20 the batch's predicted peak (8520) leaves no room for a
    # 1200-token prompt; at step 20 only 2 x 1200 remain, so 5 prompts fit.
    switch = _switch(_cliff(llama8b, budget_tokens=9000))
    assert switch.step == 20 and switch.admitted_prompts == (0, 1, 2, 3, 4)
    assert switch.tdpipe_step == 20
    assert switch.tokens_per_s == pytest.approx(switch.tdpipe_tokens_per_s)


def test_planner_beats_tdpipe_when_memory_is_plentiful(llama8b):
    # Everything fits now: prefilling at once lets the queue join a full batch, while TD-Pipe's
    # rule waits for the intensity to drop at the cliff (step 20).
    switch = _switch(_cliff(llama8b))
    assert switch.step == 1 and len(switch.admitted_prompts) == 8
    assert switch.tdpipe_step == 20
    assert switch.tokens_per_s > 1.05 * switch.tdpipe_tokens_per_s


@pytest.mark.parametrize("seed", range(4))
def test_planner_matches_or_beats_tdpipe_and_both_solvers_agree(llama8b, seed):
    rng = random.Random(seed)
    n = rng.randint(16, 96)
    problem = build_problem(
        llama8b, BUILTIN["h100"], [rng.randint(128, 4096) for _ in range(n)],
        remaining_output_lens=[rng.randint(1, 300) for _ in range(n)],
        waiting=[(rng.randint(128, 2048), rng.randint(16, 300)) for _ in range(32)],
        switch_cost_us=rng.choice([500.0, 5000.0, 50000.0]),
        kv_budget_bytes=rng.choice([None, 20 * 2 ** 30]))
    cbc, ortools = _switch(problem, "cbc"), _switch(problem, "ortools")
    assert cbc.tokens_per_s >= cbc.tdpipe_tokens_per_s * (1 - 1e-9)
    assert cbc.tokens_per_s == pytest.approx(ortools.tokens_per_s, rel=1e-9)


def test_the_plan_carries_the_switch_point(llama8b):
    from pipedecode.planner import plan

    schedule = plan(llama8b, BUILTIN["h100"], [1000] * 8,
                    remaining_output_lens=[20] * 6 + [200] * 2,
                    waiting=[(1000, 200)] * 8)
    assert schedule.switch is not None and schedule.switch.step == 1
    assert plan(llama8b, BUILTIN["h100"], [1000] * 8).switch is None


def test_intensities_compare_the_decode_drop_with_the_bubble():
    from pipedecode.planner.switch import switch_intensity

    w = switch_intensity(0.5, 2.0, prefill_us=1000.0, bubble_us=200.0)
    assert (w.spatial, w.temporal, w.switch) == (0.25, 0.8, True)
    assert not switch_intensity(1.9, 2.0, 1000.0, 200.0).switch      # 0.95 > 0.8
    assert not switch_intensity(0.1, 2.0, 1000.0, 2000.0).switch     # bubble > prefill
    with pytest.raises(ValueError, match="positive start rate and prefill"):
        switch_intensity(1.0, 0.0, 1000.0, 0.0)


def test_greedy_prefill_stops_at_the_first_prompt_that_does_not_fit():
    from pipedecode.planner.switch import greedy_prefill

    assert greedy_prefill(10, [5, 5, 1, 1], budget=20) == (2, 20)
    assert greedy_prefill(10, [11, 1], budget=20) == (0, 10)         # queue order: no skipping
    assert greedy_prefill(0, [], budget=5) == (0, 0)


def test_a_pipeline_adds_the_fill_and_drain_of_its_stages_to_the_bubble():
    from pipedecode.planner.switch import pipeline_bubble_us, switch_intensity

    # 4 stages, a 1200 us prefill in 12 micro-batches: 300 us of it per stage, stage steps of
    # 25 us, fill and drain 3 x 25 = 75 us. The phase lasts 375 us on a stage, its bubble
    # 20 + 75 = 95 us: temporal (375 - 95) / 375
    assert pipeline_bubble_us(20.0, 4, 25.0) == 95.0
    w = switch_intensity(0.5, 1.0, 1200.0, 20.0, num_stages=4, prefill_micro_batches=12)
    assert w.bubble_us == 95.0 and w.temporal == pytest.approx(280 / 375) and w.switch
    assert not switch_intensity(0.8, 1.0, 1200.0, 20.0, num_stages=4,
                                prefill_micro_batches=12).switch           # 0.8 > 0.747
    # the same prefill in 3 micro-batches: steps of 100 us, the phase 300 + 300 us, its
    # bubble 320 us: (600 - 320) / 600; without a fixed cost P / (P + N - 1) = 3 / 6
    few = switch_intensity(0.46, 1.0, 1200.0, 20.0, num_stages=4, prefill_micro_batches=3)
    assert few.bubble_us == 320.0 and few.temporal == pytest.approx(280 / 600) and few.switch
    assert switch_intensity(0.5, 1.0, 1200.0, 0.0, num_stages=4,
                            prefill_micro_batches=3).temporal == pytest.approx(0.5)
    # one prefill micro-batch through 8 stages: 1 / 8 of the phase is useful
    assert switch_intensity(0.1, 1.0, 800.0, 0.0, num_stages=8).temporal == pytest.approx(1 / 8)


def test_one_stage_is_the_one_gpu_rule_exactly():
    from pipedecode.planner.switch import switch_intensity

    for prefill, cost, batches in ((1000.0, 200.0, 1), (1234.5, 0.0, 7), (3e5, 31.7, 40)):
        w = switch_intensity(0.3, 0.9, prefill, cost, num_stages=1,
                             prefill_micro_batches=batches)
        assert (w.temporal, w.bubble_us) == ((prefill - cost) / prefill, cost)


def test_pipeline_inputs_are_checked():
    from pipedecode.planner.switch import pipeline_bubble_us, switch_intensity

    with pytest.raises(ValueError, match="num_stages must be a positive integer"):
        switch_intensity(1.0, 1.0, 100.0, 0.0, num_stages=0)
    with pytest.raises(ValueError, match="prefill_micro_batches"):
        switch_intensity(1.0, 1.0, 100.0, 0.0, num_stages=2, prefill_micro_batches=0)
    with pytest.raises(ValueError, match=">= 0"):
        pipeline_bubble_us(-1.0, 2, 1.0)


def test_prefill_batches_cut_as_the_engine_cuts_its_prefill_batches():
    from pipedecode.planner.switch import prefill_batches

    assert prefill_batches([5, 5, 5], 10) == 2
    assert prefill_batches([12, 3], 10) == 2            # a long prompt runs alone
    assert prefill_batches([3, 12, 3], 10) == 3
    assert prefill_batches([3, 12, 3], None) == 1
    assert prefill_batches([], 10) == 0
