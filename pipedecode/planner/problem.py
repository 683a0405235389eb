"""The planning problem: model, device, workload, options; built and checked, never solved here.

Owns `Problem`, `Bucket`, `WaitingPrompt` and `build_problem` (resolving names, bucketing requests
by context length so the ILP stays small, the overlapped modes' options: memory-partition sizes,
the co-resident attention budgets the profile's samples price, the fewest tokens a micro-batch
may hold) and the checks every input passes before anything the size of the batch is allocated:
the weights fit the device, the KV budget fits beside them, the request count is bounded by what
the budget holds, contexts stay within the model's positions. Knows nothing of solvers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipedecode.errors import PlanningError
from pipedecode.models import ModelShape, check_positions, gib, max_positions, model_shape
from pipedecode.planner import cost as _cost
from pipedecode.profiles.latency import coresident_budgets
from pipedecode.profiles.registry import load_profile
from pipedecode.profiles.schema import DeviceProfile

DEFAULT_MAX_BUCKETS = 24
DEFAULT_MEMORY_UTILIZATION = 0.9     # share of device memory weights + KV cache may take
DEFAULT_SWITCH_COST_US = 2000.0      # phase switch: drain, swap CUDA graphs, schedule prefill
# Each micro-batch re-reads all weights every step, and the ILP grows with their count: beyond a
# few, interleaving only loses; 16 bounds the problem size.
MAX_MICRO_BATCHES = 16


@dataclass(frozen=True)
class Bucket:
    """Requests of similar context length; the ILP decides how many go to each micro-batch."""

    request_ids: tuple[int, ...]
    context_lens: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.request_ids)

    @property
    def mean_context(self) -> float:
        return sum(self.context_lens) / self.count


@dataclass(frozen=True)
class WaitingPrompt:
    """A queued request: tokens to prefill and predicted output length."""

    prompt_len: int
    output_len: int

    def __post_init__(self) -> None:
        if self.prompt_len <= 0 or self.output_len <= 0:
            raise ValueError(f"WaitingPrompt lengths must be positive, got {self}")


@dataclass(frozen=True)
class Problem:
    """Everything `solve` needs; a pure value."""

    model: ModelShape
    profile: DeviceProfile
    request_ids: tuple[int, ...]
    context_lens: tuple[int, ...]
    buckets: tuple[Bucket, ...]
    num_micro_batches: int
    memory_sms_options: tuple[int, ...]
    kv_budget_bytes: int
    remaining_output_lens: tuple[int, ...] | None = None
    waiting: tuple[WaitingPrompt, ...] = ()
    horizon_steps: int = 0
    switch_cost_us: float = DEFAULT_SWITCH_COST_US
    coresident_options: tuple[int, ...] = ()   # attention shared-memory budgets, bytes
    min_micro_batch_tokens: int = 0            # fewest tokens per micro-batch when overlapped

    def __post_init__(self) -> None:
        if not self.request_ids or len(self.request_ids) != len(self.context_lens):
            raise ValueError("Problem: request_ids and context_lens must be non-empty and "
                             "equally long")
        if self.num_micro_batches < 2:
            raise ValueError(f"Problem.num_micro_batches must be >= 2, "
                             f"got {self.num_micro_batches}")
        if self.remaining_output_lens is not None and \
                len(self.remaining_output_lens) != len(self.request_ids):
            raise ValueError("Problem.remaining_output_lens must have one entry per request")
        if self.remaining_output_lens is not None and min(self.remaining_output_lens) < 1:
            raise ValueError("Problem.remaining_output_lens must be >= 1 (finished requests leave)")

    @property
    def kv_bytes(self) -> int:
        """KV cache the batch holds after this step (each request gains one token)."""
        return sum(c + 1 for c in self.context_lens) * self.model.kv_bytes_per_token()


def resolve_model(spec: ModelShape | str) -> ModelShape:
    """A ModelShape from anything `model_shape` accepts (presets without importing transformers)."""
    return model_shape(spec)


def weight_bytes(model: ModelShape) -> int:
    """Decoder weights, embedding and LM head (counted untied): `ModelShape.weight_bytes`."""
    return model.weight_bytes()


def kv_budget(shape: ModelShape, profile: DeviceProfile, kv_budget_bytes: int | None = None) -> int:
    """The bytes the KV cache may take: `kv_budget_bytes` checked against the device, or by
    default 90% of the device minus the weights. PlanningError when the weights alone leave no
    room (pointing to pipeline parallelism) or the budget exceeds what is left beside them."""
    weights, memory = shape.weight_bytes(), profile.memory_bytes
    usable = int(memory * DEFAULT_MEMORY_UTILIZATION)
    if weights >= (usable if kv_budget_bytes is None else memory):
        gpus = weights // usable + 1         # each GPU keeps room for its share of the cache
        raise PlanningError(
            f"{gib(weights)} of weights ({shape.name}) exceed the {gib(memory)} of one "
            f"{profile.name} ({gib(usable)} usable at {DEFAULT_MEMORY_UTILIZATION:.0%}): split "
            f"the model over {gpus} or more GPUs with pipeline parallelism "
            f"(pipedecode plan --pipeline-parallel {gpus})")
    if kv_budget_bytes is None:
        return usable - weights
    if not (isinstance(kv_budget_bytes, int) and kv_budget_bytes > 0):
        raise PlanningError(f"the KV budget must be a positive number of bytes, "
                            f"got {kv_budget_bytes!r}")
    if kv_budget_bytes > memory - weights:
        raise PlanningError(
            f"a KV budget of {gib(kv_budget_bytes)} beside {gib(weights)} of weights "
            f"({shape.name}) exceeds the {gib(memory)} of {profile.name}; the budget can be at "
            f"most {gib(memory - weights)}")
    return kv_budget_bytes


def max_requests(shape: ModelShape, profile: DeviceProfile,
                 kv_budget_bytes: int | None = None) -> int:
    """The most requests whose KV cache fits the budget at one token each: an upper bound on
    any batch or queue, checked before lists of that length are made."""
    return kv_budget(shape, profile, kv_budget_bytes) // shape.kv_bytes_per_token()


def check_request_count(count: int, model: ModelShape | str, device: DeviceProfile | str,
                        kv_budget_bytes: int | None = None, what: str = "batch") -> None:
    """PlanningError when `count` requests cannot fit the device even at one token each."""
    shape, profile = resolve_model(model), load_profile(device)
    limit = max_requests(shape, profile, kv_budget_bytes)
    if count > limit:
        raise PlanningError(
            f"a {what} of {count:,} requests cannot fit {profile.name}: at one token each "
            f"({shape.kv_bytes_per_token() / 1024:.0f} KiB of KV cache), at most {limit:,} fit "
            f"the {gib(kv_budget(shape, profile, kv_budget_bytes))} left for the KV cache")


def make_buckets(request_ids: tuple[int, ...], context_lens: tuple[int, ...],
                 max_buckets: int) -> tuple[Bucket, ...]:
    """Requests sorted by context, cut into at most `max_buckets` runs of distinct lengths."""
    order = sorted(range(len(request_ids)), key=lambda i: (context_lens[i], request_ids[i]))
    distinct = sorted(set(context_lens))
    if len(distinct) <= max_buckets:
        groups = {c: [] for c in distinct}
        for i in order:
            groups[context_lens[i]].append(i)
        runs = list(groups.values())
    else:   # equal-count cuts, never splitting one context length across buckets
        runs, size = [[]], len(order) / max_buckets
        for pos, i in enumerate(order):
            same = runs[-1] and context_lens[runs[-1][-1]] == context_lens[i]
            if runs[-1] and not same and pos >= size * len(runs) and len(runs) < max_buckets:
                runs.append([])
            runs[-1].append(i)
    return tuple(Bucket(tuple(request_ids[i] for i in run), tuple(context_lens[i] for i in run))
                 for run in runs)


def build_problem(model: ModelShape | str, device: DeviceProfile | str, context_lens,
                  *, request_ids=None, remaining_output_lens=None, waiting=(),
                  num_micro_batches: int = 2, memory_sms_options=None,
                  max_buckets: int = DEFAULT_MAX_BUCKETS, kv_budget_bytes: int | None = None,
                  horizon_steps: int | None = None,
                  switch_cost_us: float = DEFAULT_SWITCH_COST_US,
                  positions: int | None = None, coresident_options=None,
                  min_micro_batch_tokens: int | None = None) -> Problem:
    """A checked Problem; PlanningError (or WorkloadError) naming the first bad input.

    `positions`: the model's max positions; by default looked up from `model` when it is a
    name, path or config (a bare ModelShape does not carry it, and contexts go unchecked).
    `coresident_options`: attention budgets (bytes) co-resident mode may use, default every
    budget the profile has samples at (none: co-resident mode is not priced); `()` turns it
    off. `min_micro_batch_tokens`: default `cost.min_micro_batch_tokens` of the profile."""
    shape, profile = resolve_model(model), load_profile(device)
    budget = kv_budget(shape, profile, kv_budget_bytes)
    if hasattr(context_lens, "__len__"):       # bound the batch before copying it
        check_request_count(len(context_lens), shape, profile, kv_budget_bytes)
    lens = tuple(int(c) for c in context_lens)
    if not lens or min(lens) < 0:
        raise PlanningError("context lengths must be a non-empty list of non-negative integers")
    check_request_count(len(lens), shape, profile, kv_budget_bytes)
    ids = tuple(range(len(lens))) if request_ids is None else tuple(int(i) for i in request_ids)
    if len(set(ids)) != len(ids) or len(ids) != len(lens):
        raise PlanningError("request_ids must be distinct, one per context length")
    options = _memory_sms(profile, memory_sms_options)
    budgets = _coresident(profile, coresident_options)
    fewest = _cost.min_micro_batch_tokens(profile, shape.dtype_bytes) \
        if min_micro_batch_tokens is None else int(min_micro_batch_tokens)
    if fewest < 0:
        raise PlanningError(f"min_micro_batch_tokens must be >= 0, got {min_micro_batch_tokens}")
    if not 2 <= num_micro_batches <= MAX_MICRO_BATCHES:
        raise PlanningError(f"num_micro_batches must be >= 2 and at most {MAX_MICRO_BATCHES}, "
                            f"got {num_micro_batches}")
    if not (math.isfinite(switch_cost_us) and switch_cost_us >= 0):
        raise PlanningError(f"switch_cost_us must be a finite number >= 0, got {switch_cost_us}")
    if waiting and hasattr(waiting, "__len__"):
        check_request_count(len(waiting), shape, profile, kv_budget_bytes, what="waiting queue")
    remaining = None if remaining_output_lens is None else \
        tuple(int(r) for r in remaining_output_lens)
    horizon = horizon_steps if horizon_steps is not None else (max(remaining) if remaining else 0)
    try:
        prompts = tuple(w if isinstance(w, WaitingPrompt) else WaitingPrompt(*w)
                        for w in waiting or ())
        problem = Problem(shape, profile, ids, lens, make_buckets(ids, lens, max_buckets),
                          num_micro_batches, options, budget, remaining, prompts,
                          int(horizon), float(switch_cost_us), budgets, fewest)
    except (TypeError, ValueError) as exc:
        raise PlanningError(f"bad planning input: {exc}") from None
    _check_positions(problem, max_positions(model) if positions is None else positions)
    if problem.kv_bytes > budget:
        raise PlanningError(
            f"the KV cache of {len(lens)} requests ({gib(problem.kv_bytes)}) does not fit "
            f"the {gib(budget)} left for it on {profile.name} beside {gib(shape.weight_bytes())} "
            f"of weights; use a smaller batch or shorter contexts, or pass a KV budget")
    return problem


def _memory_sms(profile: DeviceProfile, memory_sms_options) -> tuple[int, ...]:
    options = profile.partition_sizes() if memory_sms_options is None else tuple(memory_sms_options)
    bad = [s for s in options if s not in profile.partition_sizes()]
    if bad:
        raise PlanningError(f"memory partition sizes {bad} are not allowed on {profile.name}; "
                            f"allowed: {profile.partition_sizes()}")
    return options


def _coresident(profile: DeviceProfile, coresident_options) -> tuple[int, ...]:
    measured = coresident_budgets(profile)
    if coresident_options is None:
        return measured
    options = tuple(int(b) for b in coresident_options)
    bad = [b for b in options if b not in measured]
    if bad:
        raise PlanningError(f"the {profile.name} profile has no co-resident samples at "
                            f"{bad} bytes, so those budgets cannot be priced; measured: "
                            f"{list(measured) or 'none (pipedecode profile measures them)'}")
    return options


def _check_positions(problem: Problem, positions: int | None) -> None:
    """Every sequence stays within the model's positions: a context and the token this step
    adds, a context and its predicted remaining output, a waiting prompt and its output."""
    if positions is None:
        return
    name = problem.model
    longest = max(problem.context_lens)
    check_positions(name, longest + 1, f"context {longest} + the step's new token", positions)
    if problem.remaining_output_lens is not None:
        ends = max(c + r for c, r in zip(problem.context_lens, problem.remaining_output_lens))
        check_positions(name, ends, "a context plus its remaining output", positions)
    if problem.waiting:
        ends = max(w.prompt_len + w.output_len for w in problem.waiting)
        check_positions(name, ends, "a waiting prompt plus its output", positions)
