"""`plan` and `solve`: from a Problem to a Schedule, through the ILP and the exact cost model.

Owns turning solver answers into micro-batches and slots, the never-slower-than-sequential
rule and the predicted times. Knows nothing of files, CLIs or GPUs.
"""

from __future__ import annotations

from dataclasses import replace

from pipedecode.planner.cost import CostModel
from pipedecode.planner.ilp import SplitChoice, build_split_lp, decode_split, refine
from pipedecode.planner.problem import Problem, build_problem
from pipedecode.planner.schedule import MicroBatch, Schedule, Slot, interleaved_pattern
from pipedecode.planner.solvers import solve_lp

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


def interleaved_slots(cost: CostModel, mbs: tuple[MicroBatch, ...], memory_sms: int):
    """(slots, prologue, epilogue): `interleaved_pattern` priced, the pattern the runtime's
    executor runs (runtime/program.py)."""
    compute_sms, all_sms = cost.profile.sm_count - memory_sms, cost.profile.sm_count
    price = {"attention": lambda mb: cost.attention_us(mb.tokens, mb.kv_tokens, memory_sms),
             "post_attn": lambda mb: cost.post_attn_us(mb.tokens, compute_sms),
             "pre_attn": lambda mb: cost.pre_attn_us(mb.tokens, compute_sms)}
    slots = [replace(s, predicted_us=price[s.stage](mbs[s.micro_batch]))
             for s in interleaved_pattern(len(mbs))]
    prologue = (Slot("pre_attn", 0, "all", 0, 0, cost.pre_attn_us(mbs[0].tokens, all_sms)),)
    epilogue = tuple(Slot("post_attn", mb.index, "all", 0, 0, cost.post_attn_us(mb.tokens, all_sms))
                     for mb in mbs[1:])
    return tuple(slots), prologue, epilogue


def sequential_slots(cost: CostModel, mb: MicroBatch) -> tuple[Slot, ...]:
    sms = cost.profile.sm_count
    return (Slot("pre_attn", 0, "all", 0, 0, cost.pre_attn_us(mb.tokens, sms)),
            Slot("attention", 0, "all", 1, 0, cost.attention_us(mb.tokens, mb.kv_tokens, sms)),
            Slot("post_attn", 0, "all", 2, 0, cost.post_attn_us(mb.tokens, sms)))


def solve(problem: Problem, solver: str = "cbc", *,
          time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> Schedule:
    """The Schedule for `problem`: ILP, exact re-pricing, sequential if that is not slower."""
    cost = CostModel(problem.model, problem.profile)
    solution = solve_lp(build_split_lp(problem, cost), solver, time_limit_s=time_limit_s)
    choice = refine(problem, cost, decode_split(problem, solution))
    tokens, kv_tokens = len(problem.context_lens), sum(problem.context_lens)
    sequential_us = cost.sequential_step_us(tokens, kv_tokens)
    common = dict(model=problem.model, device=problem.profile.name,
                  sequential_step_us=sequential_us,
                  roofline_floor_us=cost.roofline_floor_us(tokens, kv_tokens), solver=solver,
                  switch=_switch(problem, cost, solver, time_limit_s))
    if choice.memory_sms:
        mbs = realize(problem, choice)
        sizes = [(mb.tokens, mb.kv_tokens) for mb in mbs]
        step_us = cost.interleaved_step_us(sizes, choice.memory_sms)
        if step_us < sequential_us:
            slots, prologue, epilogue = interleaved_slots(cost, mbs, choice.memory_sms)
            return Schedule(mode="interleaved", memory_sms=choice.memory_sms,
                            compute_sms=problem.profile.sm_count - choice.memory_sms,
                            micro_batches=mbs, slots=slots, prologue=prologue, epilogue=epilogue,
                            phase_us=tuple(cost.interleaved_phases_us(sizes, choice.memory_sms)),
                            predicted_step_us=step_us, **common)
    mb = MicroBatch(0, problem.request_ids, problem.context_lens)
    slots = sequential_slots(cost, mb)
    return Schedule(mode="sequential", memory_sms=0, compute_sms=problem.profile.sm_count,
                    micro_batches=(mb,), slots=slots, phase_us=tuple(s.predicted_us for s in slots),
                    predicted_step_us=sequential_us, **common)


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
