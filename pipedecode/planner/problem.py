"""The planning problem: model, device, workload, options; built and checked, never solved here.

Owns `Problem`, `Bucket`, `WaitingPrompt` and `build_problem` (resolving names, bucketing requests
by context length so the ILP stays small, and the memory check). Knows nothing of solvers.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipedecode.errors import PlanningError
from pipedecode.models import ModelShape, model_shape
from pipedecode.profiles.registry import load_profile
from pipedecode.profiles.schema import DeviceProfile

DEFAULT_MAX_BUCKETS = 24
DEFAULT_MEMORY_UTILIZATION = 0.9     # share of device memory weights + KV cache may take
DEFAULT_SWITCH_COST_US = 2000.0      # phase switch: drain, swap CUDA graphs, schedule prefill


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
    """Decoder weights, embedding and LM head (counted untied)."""
    return model.num_layers * model.weight_bytes_per_layer() \
        + 2 * model.vocab_size * model.hidden_size * model.dtype_bytes


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
                  switch_cost_us: float = DEFAULT_SWITCH_COST_US) -> Problem:
    """A checked Problem; PlanningError when the batch's KV cache cannot fit the device."""
    shape = resolve_model(model)
    profile = load_profile(device)
    lens = tuple(int(c) for c in context_lens)
    if not lens or min(lens) < 0:
        raise PlanningError("context lengths must be a non-empty list of non-negative integers")
    ids = tuple(range(len(lens))) if request_ids is None else tuple(int(i) for i in request_ids)
    if len(set(ids)) != len(ids) or len(ids) != len(lens):
        raise PlanningError("request_ids must be distinct, one per context length")
    options = profile.partition_sizes() if memory_sms_options is None else tuple(memory_sms_options)
    bad = [s for s in options if s not in profile.partition_sizes()]
    if bad:
        raise PlanningError(f"memory partition sizes {bad} are not allowed on {profile.name}; "
                            f"allowed: {profile.partition_sizes()}")
    if kv_budget_bytes is None:
        usable = profile.memory_bytes * DEFAULT_MEMORY_UTILIZATION
        kv_budget_bytes = int(usable - weight_bytes(shape))
    remaining = None if remaining_output_lens is None else \
        tuple(int(r) for r in remaining_output_lens)
    horizon = horizon_steps if horizon_steps is not None else (max(remaining) if remaining else 0)
    try:
        prompts = tuple(w if isinstance(w, WaitingPrompt) else WaitingPrompt(*w)
                        for w in waiting or ())
        problem = Problem(shape, profile, ids, lens, make_buckets(ids, lens, max_buckets),
                          num_micro_batches, options, kv_budget_bytes, remaining, prompts,
                          int(horizon), float(switch_cost_us))
    except (TypeError, ValueError) as exc:
        raise PlanningError(f"bad planning input: {exc}") from None
    if problem.kv_bytes > kv_budget_bytes:
        gib = 2 ** 30
        raise PlanningError(
            f"the KV cache of {len(lens)} requests ({problem.kv_bytes / gib:.1f} GiB) does not fit "
            f"the {max(kv_budget_bytes, 0) / gib:.1f} GiB left on {profile.name} after "
            f"{weight_bytes(shape) / gib:.1f} GiB of weights; use a smaller batch or shorter "
            f"contexts, or pass a KV budget")
    return problem
