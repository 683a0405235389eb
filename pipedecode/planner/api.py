"""`plan` and `solve`: from a Problem to a Schedule, through the ILP and the exact cost model.

Owns turning solver answers into micro-batches and slots (interleaved on two partitions,
co-resident on every SM, or sequential), the never-slower-than-sequential rule, the predicted
times and the schedule's `mode_reason` (which mode, at what predicted times, and why an
overlapped mode could not be priced or was refused). Knows nothing of files, CLIs or GPUs.
"""

from __future__ import annotations

from dataclasses import replace

from pipedecode.planner.cost import CostModel
from pipedecode.planner.ilp import (SplitChoice, build_split_lp, decode_split, exact_step_us,
                                    micro_batches_too_small, refine, sequential_without_ilp)
from pipedecode.planner.problem import Problem, build_problem
from pipedecode.planner.schedule import MicroBatch, Schedule, Slot, interleaved_pattern
from pipedecode.planner.solvers import solve_lp
from pipedecode.profiles.latency import coresident_budgets

DEFAULT_TIME_LIMIT_S = 30.0


def realize(problem: Problem, choice: SplitChoice) -> tuple[MicroBatch, ...]:
    """Concrete micro-batches from per-bucket counts: within a bucket, longest context first to
    the micro-batch (with room left) holding the least context so far. Deterministic."""
    m = problem.num_micro_batches
    ids: list[list[int]] = [[] for _ in range(m)]
    lens: list[list[int]] = [[] for _ in range(m)]
    for bucket, counts in zip(problem.buckets, choice.counts):
        room = list(counts)
        for rid, ctx in sorted(zip(bucket.request_ids, bucket.context_lens),
                               key=lambda p: (-p[1], p[0])):
            j = min((j for j in range(m) if room[j] > 0), key=lambda j: (sum(lens[j]), j))
            room[j] -= 1
            ids[j].append(rid)
            lens[j].append(ctx)
    return tuple(MicroBatch(j, tuple(ids[j]), tuple(lens[j])) for j in range(m))


def interleaved_slots(cost: CostModel, mbs: tuple[MicroBatch, ...], memory_sms: int,
                      smem_bytes: int = 0):
    """(slots, prologue, epilogue): `interleaved_pattern` priced, the pattern the runtime's
    executor runs (runtime/program.py), on two partitions or (smem_bytes) co-resident: every
    op on all SMs at co-resident speed."""
    all_sms = cost.profile.sm_count

    def whole(stage: str, mb: MicroBatch) -> float:
        return getattr(cost, f"{stage}_us")(mb.tokens, all_sms)

    if smem_bytes:
        def attention(mb: MicroBatch) -> float:
            return cost.coresident_attention_us(mb.tokens, mb.kv_tokens, smem_bytes)

        def compute(stage: str, mb: MicroBatch) -> float:
            return whole(stage, mb) * cost.coresident_factors(smem_bytes, mb.tokens)[1]
        alone = compute
    else:
        def attention(mb: MicroBatch) -> float:
            return cost.attention_us(mb.tokens, mb.kv_tokens, memory_sms)

        def compute(stage: str, mb: MicroBatch) -> float:
            return getattr(cost, f"{stage}_us")(mb.tokens, all_sms - memory_sms)
        alone = whole
    slots = [replace(s, predicted_us=attention(mbs[s.micro_batch]) if s.stage == "attention"
                     else compute(s.stage, mbs[s.micro_batch]))
             for s in interleaved_pattern(len(mbs))]
    prologue = (Slot("pre_attn", 0, "all", 0, 0, alone("pre_attn", mbs[0])),)
    epilogue = tuple(Slot("post_attn", mb.index, "all", 0, 0, alone("post_attn", mb))
                     for mb in mbs[1:])
    return tuple(slots), prologue, epilogue


def sequential_slots(cost: CostModel, mb: MicroBatch) -> tuple[Slot, ...]:
    sms = cost.profile.sm_count
    return (Slot("pre_attn", 0, "all", 0, 0, cost.pre_attn_us(mb.tokens, sms)),
            Slot("attention", 0, "all", 1, 0, cost.attention_us(mb.tokens, mb.kv_tokens, sms)),
            Slot("post_attn", 0, "all", 2, 0, cost.post_attn_us(mb.tokens, sms)))


def solve(problem: Problem, solver: str = "cbc", *,
          time_limit_s: float = DEFAULT_TIME_LIMIT_S, closed_form: bool = True) -> Schedule:
    """The Schedule for `problem`: ILP over sequential, interleaved (each split) and co-resident
    (each attention budget), exact re-pricing, sequential if the choice is not faster.

    Where the ILP's constraints admit no overlapped option (`ilp.sequential_without_ilp`: too
    few requests for the micro-batches, or no option at all) the sequential answer is taken
    without building or solving it; the Schedule is the same. closed_form=False solves the ILP
    even then (tests and benchmarks compare the two)."""
    cost = CostModel(problem.model, problem.profile)
    choice = sequential_without_ilp(problem, cost) if closed_form else None
    if choice is None:
        solution = solve_lp(build_split_lp(problem, cost), solver, time_limit_s=time_limit_s)
        choice = refine(problem, cost, decode_split(problem, solution))
    tokens, kv_tokens = len(problem.context_lens), sum(problem.context_lens)
    sequential_us = cost.sequential_step_us(tokens, kv_tokens)
    common = dict(model=problem.model, device=problem.profile.name,
                  sequential_step_us=sequential_us,
                  roofline_floor_us=cost.roofline_floor_us(tokens, kv_tokens), solver=solver,
                  switch=_switch(problem, cost, solver, time_limit_s))
    notes = refusals(problem)
    if choice.mode != "sequential":
        step_us = exact_step_us(problem, cost, choice)
        if step_us < sequential_us:
            reason = f"{_option(choice)}: predicted {step_us / 1e3:.2f} ms, sequential " \
                     f"{sequential_us / 1e3:.2f} ms"
            return _overlapped(problem, cost, choice, step_us,
                               "; ".join([reason] + notes), common)
        notes.insert(0, f"the ILP's {_option(choice)} re-priced exactly at "
                        f"{step_us / 1e3:.2f} ms is not faster")
    elif not any(n.startswith("overlapped modes refused") for n in notes) and \
            (problem.memory_sms_options or problem.coresident_options):
        notes.insert(0, "no overlapped mode is predicted faster")
    mb = MicroBatch(0, problem.request_ids, problem.context_lens)
    slots = sequential_slots(cost, mb)
    reason = "; ".join([f"sequential: predicted {sequential_us / 1e3:.2f} ms"] + notes)
    return Schedule(mode="sequential", memory_sms=0, compute_sms=problem.profile.sm_count,
                    micro_batches=(mb,), slots=slots, phase_us=tuple(s.predicted_us for s in slots),
                    predicted_step_us=sequential_us, mode_reason=reason, **common)


def _option(choice: SplitChoice) -> str:
    if choice.mode == "coresident":
        return f"coresident (attention within {choice.smem_bytes // 1024} KiB per SM)"
    return f"interleaved ({choice.memory_sms}-SM memory partition)"


def _overlapped(problem: Problem, cost: CostModel, choice: SplitChoice, step_us: float,
                reason: str, common: dict) -> Schedule:
    mbs = realize(problem, choice)
    sizes = [(mb.tokens, mb.kv_tokens) for mb in mbs]
    sms = problem.profile.sm_count
    if choice.mode == "coresident":
        slots, prologue, epilogue = interleaved_slots(cost, mbs, 0, choice.smem_bytes)
        return Schedule(mode="coresident", memory_sms=sms, compute_sms=sms, micro_batches=mbs,
                        slots=slots, prologue=prologue, epilogue=epilogue,
                        phase_us=tuple(cost.coresident_phases_us(sizes, choice.smem_bytes)),
                        predicted_step_us=step_us, attention_smem_bytes=choice.smem_bytes,
                        mode_reason=reason, **common)
    slots, prologue, epilogue = interleaved_slots(cost, mbs, choice.memory_sms)
    return Schedule(mode="interleaved", memory_sms=choice.memory_sms,
                    compute_sms=sms - choice.memory_sms, micro_batches=mbs, slots=slots,
                    prologue=prologue, epilogue=epilogue,
                    phase_us=tuple(cost.interleaved_phases_us(sizes, choice.memory_sms)),
                    predicted_step_us=step_us, mode_reason=reason, **common)


def refusals(problem: Problem) -> list[str]:
    """Why an overlapped mode cannot be priced or run for this problem (empty: none)."""
    notes = []
    if not problem.coresident_options and coresident_budgets(problem.profile):
        notes.append("coresident not priced: turned off (coresident_options=())")
    elif not problem.coresident_options:
        notes.append(f"coresident not priced: the {problem.profile.name} profile has no "
                     f"co-resident samples (`pipedecode profile` measures them on a Hopper GPU)")
    fewest, n = problem.min_micro_batch_tokens, problem.num_micro_batches
    requests = len(problem.context_lens)
    if fewest > 1 and micro_batches_too_small(problem):
        notes.append(f"overlapped modes refused: {n} micro-batches of {requests} requests hold "
                     f"at most {requests // n} tokens each, fewer than {fewest} (twice the ridge "
                     f"point in tokens, 2 x peak FLOP/s / (HBM bytes/s x "
                     f"{problem.model.dtype_bytes} bytes per weight)), too few to stay "
                     f"compute-bound (ILP constraints compute_bound_mb*)")
    return notes


def _switch(problem: Problem, cost: CostModel, solver: str, time_limit_s: float):
    if not problem.waiting or problem.remaining_output_lens is None:
        return None
    from pipedecode.planner.switch import plan_switch

    return plan_switch(problem, cost, solver, time_limit_s=time_limit_s)


def plan(model, device, context_lens, *, waiting=None, remaining_output_lens=None,
         solver: str = "cbc", time_limit_s: float = DEFAULT_TIME_LIMIT_S, **options) -> Schedule:
    """A Schedule for `model` (preset name or ModelShape) on `device` (profile name, file or
    DeviceProfile) decoding requests with `context_lens`.

    `waiting` ([(prompt_len, predicted_output_len)]) with `remaining_output_lens` (one per
    request) adds the decode-to-prefill switch point. Other options go to `build_problem`
    (num_micro_batches, memory_sms_options, max_buckets, kv_budget_bytes, horizon_steps,
    switch_cost_us, request_ids).
    """
    problem = build_problem(model, device, context_lens, waiting=waiting or (),
                            remaining_output_lens=remaining_output_lens, **options)
    return solve(problem, solver, time_limit_s=time_limit_s)
