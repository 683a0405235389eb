"""The decode-to-prefill switch point (TD-Pipe): when to stop decoding and prefill the queue.

Owns the horizon model, TD-Pipe's rule (the baseline) and the one-hot ILP over switch steps.
Knows nothing of SM partitions: decode steps are priced sequentially (all SMs), which scales
every decode step alike.

Horizon model. The running batch has requests with context c_i and r_i tokens still to produce
(one per decode step); as they finish the batch shrinks and each step earns fewer tokens for
nearly the same time (weights are read whatever the batch). Switching after k decode steps
(1 <= k <= min(horizon, max r_i); k = max r_i: decode the batch to its end first) costs
`switch_cost_us` (the bubble) plus the prefill of the waiting prompts that fit; then the merged
batch decodes until every request, old and admitted, is done. Objective: tokens / time over that
horizon, tokens = sum r_i + sum of admitted output lengths. Admission: prompts in queue order
while the KV cache at its predicted peak fits (requests still running at the switch hold
c_i + r_i tokens, admitted prompts prompt + output: TD-Pipe's greedy prefill, nobody assumed
to finish early). Memory is what makes an early switch costly: little is free yet, so few
prompts are admitted for the same bubble.

TD-Pipe's spatial-temporal intensity comparison: switch at the first step whose decode
throughput relative to the throughput at step 0 (spatial intensity) falls below
(T_prefill - T_bubble) / T_prefill (temporal intensity). The planner prices every candidate
step, so it matches or beats the rule under the same model. `switch_intensity` (the
comparison) and `greedy_prefill` (the admission) are pure functions of numbers, the one
implementation the engine's temporal policy and the pipeline simulator (pipedecode/sim) call
online too.

In a pipeline of N balanced stages both sides of the comparison are per stage. The P prefill
micro-batches take a stage step each (their prefill time / (N P)) and the phase fills and
drains the pipeline in N - 1 more: on a stage, the phase lasts its useful work (prefill / N)
plus those N - 1 steps, and the bubble is the fixed cost plus the same N - 1 steps. So the
temporal intensity is (prefill / N - cost) / (prefill / N + (N - 1) step): P / (P + N - 1)
without a fixed cost, and N = 1 is the one-GPU rule exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipedecode.errors import PlanningError
from pipedecode.planner.cost import CostModel
from pipedecode.planner.lp import Builder
from pipedecode.planner.problem import Problem
from pipedecode.planner.schedule import SwitchPoint
from pipedecode.planner.solvers import solve_lp

_ALL_STEPS_UP_TO = 4096
_GRID = 512


@dataclass(frozen=True)
class SwitchIntensity:
    """TD-Pipe's two intensities at one decode step; switch to prefill when spatial < temporal.

    spatial: decode throughput now over the throughput at the start of the decode phase (it
    falls as requests finish and the batch thins). temporal: (T_prefill - T_bubble) /
    T_prefill per stage, the share of a phase switch spent on useful prefill work, for the
    prompts the switch would admit. bubble_us: T_bubble (`pipeline_bubble_us`)."""

    spatial: float
    temporal: float
    bubble_us: float = 0.0

    @property
    def switch(self) -> bool:
        return self.spatial < self.temporal


def pipeline_bubble_us(switch_cost_us: float, num_stages: int, stage_step_us: float) -> float:
    """Idle time a stage pays for one phase switch in a pipeline of `num_stages`: the fixed
    cost plus the (num_stages - 1) stage steps that fill and drain it."""
    if not isinstance(num_stages, int) or isinstance(num_stages, bool) or num_stages < 1:
        raise ValueError(f"num_stages must be a positive integer, got {num_stages!r}")
    if switch_cost_us < 0 or stage_step_us < 0:
        raise ValueError(f"the switch cost and the stage step must be >= 0, got "
                         f"{switch_cost_us} and {stage_step_us}")
    return switch_cost_us + (num_stages - 1) * stage_step_us


def switch_intensity(decode_tokens_per_us: float, start_tokens_per_us: float,
                     prefill_us: float, bubble_us: float, *, num_stages: int = 1,
                     prefill_micro_batches: int = 1) -> SwitchIntensity:
    """The comparison from decode rates (sequences / predicted step time), the predicted
    prefill time (whole model) of the prompts a switch admits, and the switch's fixed cost
    `bubble_us` (one GPU: the prefill's launch cost). A pipeline of `num_stages` adds the
    fill and drain of its stages by `prefill_micro_batches` prefill micro-batches
    (`prefill_batches`) to the phase and to its bubble (module docstring); num_stages = 1 is
    exactly the one-GPU comparison."""
    if start_tokens_per_us <= 0 or prefill_us <= 0:
        raise ValueError(f"switch_intensity needs a positive start rate and prefill time, got "
                         f"{start_tokens_per_us} and {prefill_us}")
    for name, value in (("num_stages", num_stages),
                        ("prefill_micro_batches", prefill_micro_batches)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    stage_us = prefill_us / num_stages          # x / 1 == x: N = 1 is the one-GPU rule
    step_us = stage_us / prefill_micro_batches
    bubble = pipeline_bubble_us(bubble_us, num_stages, step_us)
    fill_us = pipeline_bubble_us(0.0, num_stages, step_us)    # 0.0 on one GPU
    return SwitchIntensity(decode_tokens_per_us / start_tokens_per_us,
                           (stage_us + fill_us - bubble) / (stage_us + fill_us), bubble)


def prefill_batches(prompt_lens, token_budget: int | None) -> int:
    """Prefill batches that prompts (in queue order) take when each batch holds at most
    `token_budget` tokens and a longer prompt runs alone (the engine's `fitting_prefix` cut);
    None: one batch."""
    batches, tokens = 0, 0
    for n in prompt_lens:
        if not batches or (token_budget is not None and tokens + n > token_budget):
            batches, tokens = batches + 1, 0
        tokens += n
    return batches


def greedy_prefill(held: int, peaks, budget: int) -> tuple[int, int]:
    """TD-Pipe's greedy prefill: how many queued requests, in queue order, to admit while the
    KV held at everyone's predicted peak (`held` for those running, then each admitted one's
    prompt + predicted output, in any one unit) stays within `budget`; and the KV held then.
    Nobody is assumed to finish early."""
    count = 0
    for peak in peaks:
        if held + peak > budget:
            break
        held += peak
        count += 1
    return count, held


@dataclass(frozen=True)
class Outcome:
    """Switch after `step` decode steps, prefill `admitted`, decode everything to the end."""

    step: int
    admitted: tuple[int, ...]
    tokens: int
    time_us: float
    kv_bytes: int
    prefill_us: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.time_us * 1e6


def _counts(rows: list[tuple[int, int]], steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per step d < steps: requests active (d < length) and their KV tokens (ctx + d)."""
    lengths = np.array([r for _, r in rows] or [0], dtype=np.int64)
    ctx = np.array([c for c, _ in rows] or [0], dtype=np.int64)
    d = np.arange(steps)
    active = lengths[None, :] > d[:, None]               # [steps, requests]
    return active.sum(1), (active * (ctx[None, :] + d[:, None])).sum(1)


class Horizon:
    """Decode steps priced as A[n] + S[n] * kv_tokens (memoised per batch size n)."""

    def __init__(self, problem: Problem, cost: CostModel) -> None:
        if problem.remaining_output_lens is None or not problem.waiting:
            raise PlanningError("the switch point needs remaining output lengths and a "
                                "waiting queue")
        self.p, self.cost = problem, cost
        rem, ctx = problem.remaining_output_lens, problem.context_lens
        self.old_steps = max(rem)
        self.steps = min(problem.horizon_steps or self.old_steps, self.old_steps)
        self.total = self.old_steps + max(w.output_len for w in problem.waiting)
        self.old_n, self.old_kv = _counts(list(zip(ctx, rem)), self.total)
        self._affine(len(rem) + len(problem.waiting), sum(ctx) / len(ctx))
        self.old_us = np.cumsum(np.concatenate([[0.0], self.price(self.old_n, self.old_kv)]))
        self._new: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._prefill: dict[int, float] = {}

    def _affine(self, most: int, mean_ctx: float) -> None:
        """A[n] + S[n] * kv = sequential step time; S from a finite difference around n*mean."""
        c, sms, layers = self.cost, self.p.profile.sm_count, self.p.model.num_layers
        self.a, self.s = np.zeros(most + 1), np.zeros(most + 1)
        for n in range(1, most + 1):
            kv0, kv1 = n * mean_ctx, n * (mean_ctx + 256)
            at0, at1 = c.attention_us(n, kv0, sms), c.attention_us(n, kv1, sms)
            self.s[n] = layers * (at1 - at0) / (kv1 - kv0)
            self.a[n] = c.sequential_step_us(n, kv0) - self.s[n] * kv0

    def price(self, n: np.ndarray, kv: np.ndarray) -> np.ndarray:
        return self.a[n] + self.s[n] * kv

    def admit(self, k: int) -> tuple[tuple[int, ...], int]:
        """Prompts admitted at a switch after k steps, and the predicted peak KV in bytes."""
        per_token = self.p.model.kv_bytes_per_token()
        running = zip(self.p.context_lens, self.p.remaining_output_lens)
        held = sum(c + r for c, r in running if r > k)
        # x * per_token > budget <=> x > budget // per_token, for integers: the same cut
        count, held = greedy_prefill(held, (w.prompt_len + w.output_len for w in self.p.waiting),
                                     self.p.kv_budget_bytes // per_token)
        return tuple(range(count)), held * per_token

    def prefill_us(self, count: int) -> float:
        if count not in self._prefill:
            self._prefill[count] = self.cost.prefill_us(
                [w.prompt_len for w in self.p.waiting[:count]])
        return self._prefill[count]

    def outcome(self, k: int) -> Outcome:
        admitted, kv_bytes = self.admit(k)
        a = len(admitted)
        if a not in self._new:   # first token from the prefill, then output - 1 decode steps
            self._new[a] = _counts([(w.prompt_len + 1, w.output_len - 1)
                                    for w in self.p.waiting[:a]], self.total)
        new_n, new_kv = self._new[a]
        n = self.old_n[k:] + new_n[:self.total - k]
        kv = self.old_kv[k:] + new_kv[:self.total - k]
        prefill = self.prefill_us(a) if a else 0.0
        time_us = self.old_us[k] + float(self.price(n, kv).sum()) + prefill
        time_us += self.p.switch_cost_us if a else 0.0
        tokens = sum(self.p.remaining_output_lens) + sum(self.p.waiting[w].output_len
                                                         for w in admitted)
        return Outcome(k, admitted, tokens, time_us, kv_bytes, prefill)

    def candidates(self) -> list[int]:
        if self.steps <= _ALL_STEPS_UP_TO:
            return list(range(1, self.steps + 1))
        grid = {1 + (self.steps - 1) * i // (_GRID - 1) for i in range(_GRID)}
        return sorted(grid | {r for r in self.p.remaining_output_lens if r <= self.steps})


def tdpipe_step(horizon: Horizon) -> int:
    """TD-Pipe's rule: first step whose decode intensity < (T_prefill - T_bubble) / T_prefill."""
    step_us = np.diff(horizon.old_us)
    peak = horizon.old_n[0] / step_us[0]
    for t in range(1, horizon.steps):
        admitted, _ = horizon.admit(t)
        if not admitted:
            continue
        prefill = horizon.prefill_us(len(admitted))
        if switch_intensity(horizon.old_n[t] / step_us[t], peak, prefill,
                            horizon.p.switch_cost_us).switch:
            return t
    return horizon.steps


def plan_switch(problem: Problem, cost: CostModel, solver: str = "cbc", *,
                time_limit_s: float = 30.0) -> SwitchPoint:
    """The switch step maximising tokens/s over the horizon, chosen by a one-hot ILP."""
    horizon = Horizon(problem, cost)
    baseline = tdpipe_step(horizon)
    steps = sorted(set(horizon.candidates()) | {baseline})
    outcomes = [o for o in map(horizon.outcome, steps) if o.admitted]
    if not outcomes:
        raise PlanningError("no waiting prompt fits the KV cache within the horizon; the switch "
                            "point needs a smaller prompt or a larger KV budget")
    b = Builder("pipedecode_switch")
    names = [b.var(f"switch_after_{o.step}", 0, 1, True) for o in outcomes]
    b.add("one_switch_step", {n: 1.0 for n in names}, "==", 1)
    b.add("kv_cache_fits_after_switch", {n: float(o.kv_bytes) for n, o in zip(names, outcomes)},
          "<=", float(problem.kv_budget_bytes))
    solution = solve_lp(b.build({n: o.tokens_per_s for n, o in zip(names, outcomes)},
                                maximize=True), solver, time_limit_s=time_limit_s)
    best = next(o for n, o in zip(names, outcomes) if solution.values[n] > 0.5)
    base, end = horizon.outcome(baseline), horizon.outcome(horizon.steps)
    return SwitchPoint(step=best.step, horizon_steps=horizon.steps,
                       tokens_per_s=best.tokens_per_s, admitted_prompts=best.admitted,
                       prefill_us=best.prefill_us, switch_cost_us=problem.switch_cost_us,
                       horizon_end_tokens_per_s=end.tokens_per_s,
                       tdpipe_step=baseline, tdpipe_tokens_per_s=base.tokens_per_s)
