"""Decode batch-size buckets and, per bucket, how the paged model runner splits a decode step.

Owns the bucket sizes a decode batch is padded to (`bucket_sizes`, `bucket_for`) and
`BucketPlans`: the planner's answer (micro-batches and the SM split, or sequential and why)
for the running batch, per bucket and mean-context bin. Bins are `REPLAN_FRACTION` wide in
ratio (mean contexts [1.25^k, 1.25^(k+1))), so a step plans anew only when its batch changes
materially, into another bucket or its mean context into another bin; a plan once made is
reused whenever the batch comes back to it, and by a neighbouring bin's batches whose mean is
within the same ratio of the plan's (a batch crossing a bin's edge does not plan again for a
change of a few percent). Every step is served by a plan made at a mean context within
`REPLAN_FRACTION` of its own. Planning costs about a millisecond where the bucket is too small
to overlap (the planner decides without its ILP) and 50-100 ms where the ILP is solved. Every
sequential answer carries its reason: interleaving switched off, the planner failing (it needs
PuLP's CBC) or choosing sequential (its `mode_reason`), or the executor's measurement finding
the interleaved step slower on this GPU (`runs_sequential`). Knows nothing of tensors,
executors or sequences: it sees sizes and token counts.

Buckets: 1, 2, 4, 8, 16, 32, then multiples of 32 up to 512 and multiples of 64 beyond, and
the largest batch itself. A step pads at most 31 rows (63 past 512), a few percent of a step
whose cost is its weights until the batch is large, and a few dozen buckets bound the CUDA
graphs captured.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from pipedecode.models import ModelShape
from pipedecode.profiles.schema import DeviceProfile

REPLAN_FRACTION = 0.25      # mean-context bins: each 25% wider than the last
PLAN_TIME_LIMIT_S = 5.0     # per plan: the ILP of one bucket solves in ~0.1 s
SMALL_STEP, LARGE_STEP, LARGE_FROM = 32, 64, 512

Planner = Callable[[ModelShape, DeviceProfile, list[int]], Any]   # -> a planner Schedule


def bucket_sizes(max_rows: int) -> tuple[int, ...]:
    """The padded batch sizes up to `max_rows` (always included)."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be positive, got {max_rows}")
    sizes = [b for b in (1, 2, 4, 8, 16) if b < max_rows]
    size = SMALL_STEP
    while size < max_rows:
        sizes.append(size)
        size += SMALL_STEP if size < LARGE_FROM else LARGE_STEP
    return tuple(sizes) + (max_rows,)


def bucket_for(num_rows: int, sizes: tuple[int, ...]) -> int:
    """The smallest bucket holding `num_rows` rows."""
    at = bisect.bisect_left(sizes, num_rows)
    if num_rows < 1 or at == len(sizes):
        raise ValueError(f"{num_rows} rows: buckets hold 1..{sizes[-1]}")
    return sizes[at]


def micro_batch_rows(num_seqs: int, num_micro_batches: int, sizes: tuple[int, ...]) -> int:
    """Rows of each micro-batch of an interleaved step: the bucket of the largest group the
    scheduler forms (groups are within one sequence of each other)."""
    return bucket_for(math.ceil(num_seqs / num_micro_batches), sizes)


@dataclass(frozen=True)
class BucketPlan:
    """How decode steps of one bucket run: `micro_batches` 1 is sequential, with `reason`
    saying why; else interleaved on `memory_sms` + `compute_sms`. mean_context_tokens: the
    batch's mean context when planned. predicted_step_us / sequential_step_us: the planner's
    (None where it did not run)."""

    rows: int
    mean_context_tokens: float
    micro_batches: int = 1
    memory_sms: int = 0
    compute_sms: int = 0
    reason: str | None = None
    predicted_step_us: float | None = None
    sequential_step_us: float | None = None

    def describe(self) -> dict[str, Any]:
        info = {"rows": self.rows, "mean_context_tokens": round(self.mean_context_tokens, 1),
                "planned_micro_batches": self.micro_batches}
        if self.micro_batches > 1:
            info.update(memory_sms=self.memory_sms, compute_sms=self.compute_sms)
        if self.predicted_step_us is not None:
            info.update(predicted_step_us=round(self.predicted_step_us, 1),
                        sequential_step_us=round(self.sequential_step_us, 1))
        if self.reason:
            info["plan_reason"] = self.reason
        return info


def default_planner(shape: ModelShape, profile: DeviceProfile, context_lens: list[int]):
    """pipedecode.planner.plan over what the paged runner runs: sequential or interleaved
    (co-resident mode is not priced: the runner would run it sequentially)."""
    from pipedecode.planner import plan

    return plan(shape, profile, context_lens, time_limit_s=PLAN_TIME_LIMIT_S,
                coresident_options=())


class BucketPlans:
    """The plan of each (bucket, mean-context bin), made on first use and kept."""

    def __init__(self, shape: ModelShape, profile: DeviceProfile, sizes: tuple[int, ...], *,
                 interleave: bool = True, planner: Planner | None = None) -> None:
        """planner(shape, profile, context_lens) -> Schedule (default: pipedecode.planner.plan
        with CBC); only its mode, SM split and number of micro-batches are used."""
        self.shape, self.profile, self.sizes = shape, profile, sizes
        self.interleave, self.planner = interleave, planner or default_planner
        self.plans: dict[tuple[int, int], BucketPlan] = {}      # (rows, bin) -> plan
        self.last_of: dict[int, BucketPlan] = {}                # rows -> the plan last used
        self.slower: dict[tuple[int, int, int], str] = {}   # (m, rows each, memory SMs) -> why
        self.num_plans, self.plan_seconds = 0, 0.0     # planner calls and their time
        self._log_step = math.log1p(REPLAN_FRACTION)

    def micro_batches(self, num_seqs: int, kv_tokens: int) -> int:
        """Micro-batches for a decode step of `num_seqs` holding `kv_tokens` (the hot path: a
        bucket lookup, a logarithm and a dict lookup unless the batch moved)."""
        plan = self.current(num_seqs, kv_tokens)
        m = plan.micro_batches
        if m > 1 and (m, micro_batch_rows(num_seqs, m, self.sizes),
                      plan.memory_sms) in self.slower:
            return 1
        return m

    def current(self, num_seqs: int, kv_tokens: int) -> BucketPlan:
        rows = bucket_for(num_seqs, self.sizes)
        mean = max(kv_tokens / num_seqs, 1.0)
        key = (rows, int(math.log(mean) / self._log_step))
        plan = self.plans.get(key) or self._neighbour(key, mean)
        if plan is None:
            plan = self.plans[key] = self._plan(rows, num_seqs, mean)
        self.last_of[rows] = plan
        return plan

    def _neighbour(self, key: tuple[int, int], mean: float) -> BucketPlan | None:
        """The plan of an adjacent bin of the same bucket made at a mean context within
        `REPLAN_FRACTION` of `mean` (in ratio), the nearer of the two; None if neither is."""
        rows, k = key
        near = [(abs(math.log(mean / p.mean_context_tokens)), p)
                for p in (self.plans.get((rows, k - 1)), self.plans.get((rows, k + 1)))
                if p is not None]
        near = [(d, p) for d, p in near if d < self._log_step]
        return min(near, key=lambda t: t[0])[1] if near else None

    def last(self, num_seqs: int) -> BucketPlan | None:
        """The plan `micro_batches` last used for a batch of `num_seqs`."""
        return self.last_of.get(bucket_for(num_seqs, self.sizes))

    def runs_sequential(self, split: tuple[int, int, int], reason: str) -> None:
        """The executor of this split (micro-batches, rows each, memory SMs) runs sequentially
        on this GPU (measured slower, or no partitions): never split that way again."""
        self.slower[split] = reason

    def _plan(self, rows: int, num_seqs: int, mean: float) -> BucketPlan:
        if not self.interleave:
            return BucketPlan(rows, mean, reason="interleaving is off (interleave=False)")
        if rows < 2:
            return BucketPlan(rows, mean, reason="one row cannot be split into micro-batches")
        # The step as it will run: real rows at the mean context, padded rows at context 1.
        lens = [max(1, round(mean))] * num_seqs + [1] * (rows - num_seqs)
        self.num_plans += 1
        start = time.perf_counter()
        try:
            schedule = self.planner(self.shape, self.profile, lens)
        except Exception as exc:  # noqa: BLE001 - planning is an optimisation; say why not
            return BucketPlan(rows, mean, reason=f"planning failed ({type(exc).__name__}: "
                                                 f"{exc})")
        finally:
            self.plan_seconds += time.perf_counter() - start
        times = dict(predicted_step_us=schedule.predicted_step_us,
                     sequential_step_us=schedule.sequential_step_us)
        m = len(schedule.micro_batches)
        if schedule.mode == "interleaved" and m >= 2:
            return BucketPlan(rows, mean, m, int(schedule.memory_sms),
                              int(schedule.compute_sms), **times)
        why = schedule.mode_reason or \
            "the planner predicts interleaving no faster than sequential"
        if schedule.mode != "sequential":
            why = f"the planner chose {schedule.mode} mode, which the paged runner does not " \
                  f"run ({why}); sequential"
        return BucketPlan(rows, mean, reason=why, **times)
