import dataclasses
import itertools
import random

import pytest

from pipedecode.planner.cost import CostModel
from pipedecode.planner.ilp import (build_split_lp, convex_pieces, decode_split, options,
                                    side_prices, split_objective_us)
from pipedecode.planner.problem import build_problem
from pipedecode.planner.solvers import solve_lp
from pipedecode.profiles.analytic import BUILTIN


def test_convex_pieces_of_a_parabola_and_a_step():
    assert convex_pieces([0, 1, 2], [0, 1, 4]) == [(0.0, 1.0), (-2.0, 3.0)]
    # a step (wave quantization) is under-estimated by its hull, never over-estimated
    xs, ys = [0, 1, 2, 3], [1, 1, 2, 2]
    pieces = convex_pieces(xs, ys)
    assert all(max(a + b * x for a, b in pieces) <= y + 1e-12 for x, y in zip(xs, ys))


def _brute_force(problem, cost):
    """Minimum of the ILP's objective over every option and every grouping that keeps each
    micro-batch at min_micro_batch_tokens or more."""
    m = problem.num_micro_batches
    best = split_objective_us(problem, cost, 0, ())
    per_bucket = [[c for c in itertools.product(range(b.count + 1), repeat=m) if sum(c) == b.count]
                  for b in problem.buckets]
    fewest = max(1, problem.min_micro_batch_tokens)
    for s, smem in options(problem):
        prices = side_prices(problem, cost, s, smem)
        for counts in itertools.product(*per_bucket):
            tokens = [sum(c[j] for c in counts) for j in range(m)]
            if min(tokens) < fewest or any(tokens[0] < t for t in tokens):
                continue
            best = min(best, split_objective_us(problem, cost, s, counts, prices, smem))
    return best


def _solve_and_check(problem, solver):
    cost = CostModel(problem.model, problem.profile)
    solution = solve_lp(build_split_lp(problem, cost), solver)
    assert solution.optimal
    assert solution.objective == pytest.approx(_brute_force(problem, cost), rel=1e-6)
    choice = decode_split(problem, solution)
    assert solution.objective == pytest.approx(
        split_objective_us(problem, cost, choice.memory_sms, choice.counts,
                           smem_bytes=choice.smem_bytes), rel=1e-6)
    return choice


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("solver", ["cbc", "ortools"])
def test_small_batches_stay_sequential_as_brute_force_says(llama8b, seed, solver):
    # 9 requests: a second micro-batch reads the weights again for too little attention
    rng = random.Random(seed)
    contexts = [rng.choice([256, 2048, 8192, 16384]) for _ in range(9)]
    problem = build_problem(llama8b, BUILTIN["h100"], contexts, memory_sms_options=(32, 64, 96))
    assert _solve_and_check(problem, solver).memory_sms == 0


@pytest.mark.parametrize("solver", ["cbc", "ortools"])
def test_large_batch_split_matches_brute_force(llama8b, solver):
    # 64 requests of 512 and 64 of 2048 tokens on an H200: every grouping of two buckets tried
    problem = build_problem(llama8b, BUILTIN["h200"], [512] * 64 + [2048] * 64,
                            memory_sms_options=(32, 64, 96), min_micro_batch_tokens=0)
    choice = _solve_and_check(problem, solver)
    assert choice.memory_sms in (32, 64, 96)


@pytest.mark.parametrize("solver", ["cbc", "ortools"])
def test_split_with_measured_corun_samples_matches_brute_force(llama8b, solver):
    # Co-run samples make a phase cost max(sides) + penalty * min(sides): the ILP's two named
    # constraints per phase must price it exactly as the brute force does.
    import dataclasses

    from pipedecode.profiles import CorunSample

    samples = (CorunSample(32, 100, 500.0, 300.0, 560.0), CorunSample(64, 68, 400.0, 380.0, 560.0))
    profile = dataclasses.replace(BUILTIN["h200"], corun_samples=samples)
    problem = build_problem(llama8b, profile, [512] * 64 + [2048] * 64,
                            memory_sms_options=(32, 64), min_micro_batch_tokens=0)
    _solve_and_check(problem, solver)
    names = {c.name for c in build_split_lp(problem, CostModel(llama8b, profile)).constraints}
    assert "corun_attention_longer_phase0_s32" in names


def test_cbc_and_ortools_agree_on_a_512_request_problem(llama8b):
    rng = random.Random(7)
    contexts = [rng.randint(128, 4096) for _ in range(512)]
    roomy = dataclasses.replace(BUILTIN["h200"], memory_bytes=2 ** 41)   # the solvers, not memory
    problem = build_problem(llama8b, roomy, contexts, max_buckets=12, min_micro_batch_tokens=0)
    lp = build_split_lp(problem, CostModel(llama8b, problem.profile), allow_sequential=False)
    cbc, ortools = solve_lp(lp, "cbc"), solve_lp(lp, "ortools")
    assert cbc.optimal and ortools.optimal
    assert cbc.objective == pytest.approx(ortools.objective, rel=1e-6)


def test_every_constraint_is_named_and_the_memory_constraint_is_there(llama8b):
    problem = build_problem(llama8b, BUILTIN["h100"], [1024] * 8, memory_sms_options=(64,))
    lp = build_split_lp(problem, CostModel(llama8b, problem.profile))
    names = {c.name for c in lp.constraints}
    assert {"one_split", "kv_cache_fits", "assign_bucket0_s64", "nonempty_mb1_s64",
            "shared_hbm_phase0_s64"} <= names
    assert len(names) == len(lp.constraints)


def test_without_sequential_the_split_is_forced(llama8b):
    problem = build_problem(llama8b, BUILTIN["h100"], [512] * 4, memory_sms_options=(64,),
                            min_micro_batch_tokens=0)
    cost = CostModel(llama8b, problem.profile)
    choice = decode_split(problem, solve_lp(build_split_lp(problem, cost, allow_sequential=False)))
    assert choice.memory_sms == 64 and sorted(sum(c) for c in zip(*choice.counts)) == [2, 2]


def test_refine_never_makes_the_exact_prediction_worse(llama8b):
    from pipedecode.planner.ilp import refine

    rng = random.Random(11)
    problem = build_problem(llama8b, BUILTIN["h200"], [rng.randint(128, 4096) for _ in range(256)],
                            min_micro_batch_tokens=0)
    cost = CostModel(llama8b, problem.profile)
    choice = decode_split(problem, solve_lp(build_split_lp(problem, cost, allow_sequential=False)))
    better = refine(problem, cost, choice)

    def exact(c):
        sizes = [(sum(r[j] for r in c.counts),
                  round(sum(r[j] * b.mean_context for r, b in zip(c.counts, problem.buckets))))
                 for j in range(2)]
        return cost.interleaved_step_us(sizes, c.memory_sms)

    assert exact(better) <= exact(choice)
    assert [sum(r) for r in better.counts] == [b.count for b in problem.buckets]


@pytest.mark.parametrize("solver", ["cbc", "ortools"])
@pytest.mark.parametrize("penalty", [0.0, 1.0])
def test_coresident_options_match_brute_force(llama8b, solver, penalty):
    """With co-resident samples the ILP weighs each budget beside the splits and sequential,
    and its optimum is the brute force's over all of them; a cheap overlap picks co-resident."""
    from pipedecode.profiles import CoresidentSample

    base = BUILTIN["h200"]
    cost = CostModel(llama8b, base)
    samples = []
    for tokens in (128, 256):
        a, c = cost.attention_us(tokens, tokens * 2048, 132), cost.linear_us(tokens, 132)
        for budget in (49152, 65536):
            samples.append(CoresidentSample("llama-3-8b", tokens, 2048, budget, a, c,
                                            max(a, c) + penalty * min(a, c), a, c))
    profile = dataclasses.replace(base, corun_slowdown=2.0, coresident_samples=tuple(samples))
    problem = build_problem(llama8b, profile, [2048] * 300 + [1024] * 100,
                            memory_sms_options=(32,), min_micro_batch_tokens=0)
    assert problem.coresident_options == (49152, 65536)
    choice = _solve_and_check(problem, solver)
    assert choice.mode == ("coresident" if penalty == 0.0 else "sequential")


@pytest.mark.parametrize("solver", ["cbc", "ortools"])
@pytest.mark.parametrize("micro_batches", [2, 3])
def test_overlap_feasible_is_where_the_ilp_without_sequential_has_a_solution(llama8b, solver,
                                                                              micro_batches):
    from pipedecode.errors import PlanningError
    from pipedecode.planner.ilp import fewest_tokens, overlap_feasible

    rng = random.Random(micro_batches)
    for fewest in (0, 3):
        edge = micro_batches * max(1, fewest)
        for requests in (edge - 1, edge, edge + 1):
            contexts = [rng.choice([64, 512, 4096]) for _ in range(requests)]
            problem = build_problem(llama8b, BUILTIN["h100"], contexts,
                                    memory_sms_options=(64,), min_micro_batch_tokens=fewest,
                                    num_micro_batches=micro_batches)
            assert fewest_tokens(problem) == max(1, fewest)
            lp = build_split_lp(problem, CostModel(llama8b, problem.profile),
                                allow_sequential=False)
            try:
                solve_lp(lp, solver)
                solved = True
            except PlanningError:
                solved = False
            assert overlap_feasible(problem) == solved == (requests >= edge), (fewest, requests)


def test_the_compute_bound_constraint_and_the_closed_form_share_the_threshold(llama8b):
    from pipedecode.planner.cost import min_micro_batch_tokens
    from pipedecode.planner.ilp import fewest_tokens, overlap_feasible

    profile = BUILTIN["h200"]
    fewest = min_micro_batch_tokens(profile)            # twice the ridge point, in tokens
    problem = build_problem(llama8b, profile, [512] * (2 * fewest), memory_sms_options=(48,))
    assert problem.min_micro_batch_tokens == fewest_tokens(problem) == fewest
    lp = build_split_lp(problem, CostModel(llama8b, profile))
    bound = {c.name: dict(c.terms) for c in lp.constraints}["compute_bound_mb1_s48"]
    assert bound["y_48"] == -fewest and overlap_feasible(problem)
    assert not overlap_feasible(build_problem(llama8b, profile, [512] * (2 * fewest - 1),
                                              memory_sms_options=(48,)))
    # no overlapped option at all: nothing is feasible but sequential, whatever the batch
    assert not overlap_feasible(build_problem(llama8b, profile, [512] * 1024,
                                              memory_sms_options=(), coresident_options=()))
