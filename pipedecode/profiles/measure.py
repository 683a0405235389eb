"""What a measured DeviceProfile holds and how its tables are built (`pipedecode profile`).

Owns the measurement plan (`MeasureSpec`), the facts read off a device (`DeviceFacts`), the
`Timer` protocol of everything measured, and the table building (`build_profile`, pure: it asks
a timer for every number, so a fake timer unit-tests it on the CPU). The GPU side of `Timer`,
which launches the runtime's kernels on SM partitions and co-resident on two plain streams, is
`pipedecode.runtime.profile_gpu`. The co-resident pairs are measured at the micro-batch sizes
the decode grid's overlapped points run (two micro-batches of 256 x 512, 384 x 1024, 512 x 512
and 1024 x 256: Llama-3-8B at batch 512 x 512, 768 x 1024, 1024 x 512, 2048 x 256), where a
device facts' `coresident_unavailable` does not say why they cannot be.
Knows nothing of kernels, GPUs or the planner beyond the profile schema.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from pipedecode.models import model_shape
from pipedecode.profiles.schema import (AttentionPoint, CoresidentSample, CorunSample,
                                        DeviceProfile, GemmPoint)

# (tokens per micro-batch, context) of the decode grid's points with micro-batches large enough
# for the planner to overlap (`planner.cost.min_micro_batch_tokens`)
CORESIDENT_POINTS = ((256, 512), (384, 1024), (512, 512), (1024, 256))


@dataclass(frozen=True)
class MeasureSpec:
    """What to measure. SM counts are partition requests (the granted counts are recorded)."""

    models: tuple[str, ...] = ("llama-2-7b", "llama-3-8b", "llama-3-70b")
    tokens: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    sm_counts: tuple[int, ...] = (16, 32, 48, 64, 80, 96, 112, 132)
    attention_batches: tuple[int, ...] = (32, 128, 512)
    attention_contexts: tuple[int, ...] = (512, 2048)
    attention_max_bytes: int = 8 * 2 ** 30     # skip KV caches larger than this
    bandwidth_sm_counts: tuple[int, ...] = (8, 16, 24, 32, 48, 64, 96, 132)
    corun_memory_sms: tuple[int, ...] = (32, 48, 64, 80)
    corun_model: str = "llama-3-8b"
    corun_tokens: int = 256                    # micro-batch size on each side
    corun_context: int = 1024
    coresident_points: tuple[tuple[int, int], ...] = CORESIDENT_POINTS
    coresident_smem_bytes: tuple[int, ...] = (64 * 1024,)   # the attention's budgets

    @classmethod
    def quick(cls) -> "MeasureSpec":
        """The decode grid's models and micro-batch sizes on the whole GPU and one partition
        size (interleaved mode measured slower than sequential at every grid point on the
        H200), and the co-resident pairs."""
        return cls(models=("llama-3-8b", "llama-2-7b"), tokens=(64, 128, 256, 512, 1024, 2048),
                   sm_counts=(48, 132), attention_batches=(64, 256, 1024),
                   attention_contexts=(512, 2048), bandwidth_sm_counts=(16, 32, 48, 64, 132),
                   corun_memory_sms=(48,))

    def __post_init__(self) -> None:
        for name in ("models", "tokens", "sm_counts", "attention_batches", "attention_contexts",
                     "bandwidth_sm_counts"):
            if not getattr(self, name):
                raise ValueError(f"MeasureSpec.{name} must not be empty")


@dataclass(frozen=True)
class DeviceFacts:
    """What the timer reads off the device rather than measures."""

    name: str
    description: str
    sm_count: int
    sm_granularity: int
    min_partition_sms: int
    memory_bytes: int
    coresident_unavailable: str | None = None    # why co-resident pairs cannot be measured


class Timer(Protocol):
    """Everything `build_profile` needs measured; latencies in microseconds."""

    def granted_sms(self, sm_count: int) -> int: ...
    def gemm_us(self, tokens: int, n: int, k: int, sm_count: int) -> float: ...
    def attention_us(self, batch: int, context: int, heads: int, kv_heads: int, head_dim: int,
                     sm_count: int) -> float: ...
    def corun_us(self, memory_sms: int, compute_sms: int, model: str, tokens: int,
                 context: int) -> tuple[float, float, float]: ...
    def coresident_us(self, model: str, tokens: int, context: int, smem_bytes: int
                      ) -> tuple[float, float, float, float, float]: ...
    def stream_bytes_per_s(self, sm_count: int) -> float: ...
    def peak_flops_per_s(self) -> float: ...
    def copy_bytes_per_s(self) -> float: ...
    def launch_us(self) -> float: ...


def gemm_shapes(models: Iterable[str]) -> list[tuple[int, int]]:
    """Distinct (n, k) of the linear layers of the named presets, in first-seen order."""
    seen: dict[tuple[int, int], None] = {}
    for name in models:
        for lin in model_shape(name).linears():
            seen.setdefault((lin.n, lin.k), None)
    return list(seen)


def attention_heads(models: Iterable[str]) -> list[tuple[int, int, int]]:
    """Distinct (heads, kv_heads, head_dim) of the named presets."""
    seen: dict[tuple[int, int, int], None] = {}
    for name in models:
        shape = model_shape(name)
        seen.setdefault((shape.num_heads, shape.num_kv_heads, shape.head_dim), None)
    return list(seen)


def plan_steps(spec: MeasureSpec, facts: DeviceFacts) -> list[tuple]:
    """Every measurement as a tuple (kind, args...), in the order they run."""
    sms = sorted({min(s, facts.sm_count) for s in spec.sm_counts})
    steps: list[tuple] = [("peak",), ("copy",), ("launch",)]
    steps += [("bandwidth", s) for s in sorted({min(s, facts.sm_count)
                                                 for s in spec.bandwidth_sm_counts})]
    for n, k in gemm_shapes(spec.models):
        steps += [("gemm", t, n, k, s) for t in spec.tokens for s in sms]
    for heads, kv_heads, dim in attention_heads(spec.models):
        for batch in spec.attention_batches:
            for ctx in spec.attention_contexts:
                if 4 * batch * kv_heads * ctx * dim > spec.attention_max_bytes:
                    continue
                steps += [("attention", batch, ctx, heads, kv_heads, dim, s) for s in sms]
    for mem in spec.corun_memory_sms:
        if mem + facts.min_partition_sms <= facts.sm_count:
            steps.append(("corun", mem, facts.sm_count - mem))
    if facts.coresident_unavailable is None:
        steps += [("coresident", tokens, ctx, smem) for smem in spec.coresident_smem_bytes
                  for tokens, ctx in spec.coresident_points]
    return steps


def build_profile(facts: DeviceFacts, timer: Timer, spec: MeasureSpec,
                  progress: Callable[[Iterable], Iterable] = lambda it: it) -> DeviceProfile:
    """Run every step of `plan_steps` through `timer` and assemble a measured DeviceProfile."""
    found: dict[str, list] = {"gemm": [], "attention": [], "corun": [], "coresident": [],
                              "bandwidth": []}
    rates: dict[str, float] = {}
    for step in progress(plan_steps(spec, facts)):
        kind, args = step[0], step[1:]
        if kind in ("peak", "copy", "launch"):
            rates[kind] = {"peak": timer.peak_flops_per_s, "copy": timer.copy_bytes_per_s,
                           "launch": timer.launch_us}[kind]()
        elif kind == "bandwidth":
            found[kind].append((timer.granted_sms(args[0]), timer.stream_bytes_per_s(args[0])))
        elif kind == "gemm":
            t, n, k, s = args
            found[kind].append(GemmPoint(t, n, k, timer.granted_sms(s), timer.gemm_us(*args)))
        elif kind == "attention":
            *shape, s = args
            found[kind].append(AttentionPoint(*shape, timer.granted_sms(s),
                                              timer.attention_us(*args)))
        elif kind == "coresident":
            found[kind].append(CoresidentSample(spec.corun_model, *args, *timer.coresident_us(
                spec.corun_model, *args)))
        else:
            mem, comp = args
            alone_m, alone_c, both = timer.corun_us(mem, comp, spec.corun_model, spec.corun_tokens,
                                                    spec.corun_context)
            found[kind].append(CorunSample(timer.granted_sms(mem), facts.sm_count
                                           - timer.granted_sms(mem), alone_m, alone_c, both))
    bandwidth = sorted(dict(found["bandwidth"]).items())
    slowdowns = [c.slowdown for c in found["corun"]]
    lowest_sms, lowest_bw = bandwidth[0]
    return DeviceProfile(
        name=facts.name, sm_count=facts.sm_count, sm_granularity=facts.sm_granularity,
        min_partition_sms=facts.min_partition_sms, peak_flops_per_s=rates["peak"],
        # the better of a device copy (read + write) and the streaming read on all SMs: what
        # a well-fed kernel reaches, which the cost model's roofline needs
        hbm_bytes_per_s=max([rates["copy"]] + [bw for _, bw in bandwidth]),
        memory_bytes=facts.memory_bytes, source="measured",
        bandwidth_by_sms=tuple(bandwidth), per_sm_bytes_per_s=lowest_bw / lowest_sms,
        gemm_latency=tuple(found["gemm"]), attention_latency=tuple(found["attention"]),
        corun_slowdown=max(1.0, statistics.median(slowdowns)) if slowdowns else 1.0,
        corun_samples=tuple(found["corun"]), coresident_samples=tuple(found["coresident"]),
        launch_overhead_us=rates["launch"],
        description=facts.description + ("" if facts.coresident_unavailable is None else
                                         f"; no co-resident samples: "
                                         f"{facts.coresident_unavailable}"))
