"""Measuring a DeviceProfile on the GPU this runs on (`pipedecode profile`).

Owns the measurement plan (`MeasureSpec`), the table building (`build_profile`, pure: it asks
a timer for every number, so a fake timer unit-tests it on the CPU) and the GPU timer
(`CudaTimer`: pipedecode's own kernels on green-context partitions, timed as CUDA-graph replays
with events, warm-up first, median of repeats, each graph cycling through enough copies of its
inputs that L2 cannot hold them). Knows nothing of the planner beyond the profile schema.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from pipedecode.models import model_shape
from pipedecode.profiles.schema import AttentionPoint, CorunSample, DeviceProfile, GemmPoint


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

    @classmethod
    def quick(cls) -> "MeasureSpec":
        return cls(models=("llama-3-8b",), tokens=(64, 512, 2048), sm_counts=(32, 64, 96, 132),
                   attention_batches=(64, 256), attention_contexts=(1024,),
                   bandwidth_sm_counts=(16, 32, 64, 132), corun_memory_sms=(48, 64))

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


class Timer(Protocol):
    """Everything `build_profile` needs measured; latencies in microseconds."""

    def granted_sms(self, sm_count: int) -> int: ...
    def gemm_us(self, tokens: int, n: int, k: int, sm_count: int) -> float: ...
    def attention_us(self, batch: int, context: int, heads: int, kv_heads: int, head_dim: int,
                     sm_count: int) -> float: ...
    def corun_us(self, memory_sms: int, compute_sms: int, model: str, tokens: int,
                 context: int) -> tuple[float, float, float]: ...
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
    return steps


def build_profile(facts: DeviceFacts, timer: Timer, spec: MeasureSpec,
                  progress: Callable[[Iterable], Iterable] = lambda it: it) -> DeviceProfile:
    """Run every step of `plan_steps` through `timer` and assemble a measured DeviceProfile."""
    found: dict[str, list] = {"gemm": [], "attention": [], "corun": [], "bandwidth": []}
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
        corun_samples=tuple(found["corun"]), launch_overhead_us=rates["launch"],
        description=facts.description)


MIN_CALLS = 8          # kernels per timed graph, so the replay's fixed cost is amortised


def rotations(bytes_per_call: int, l2_bytes: int, most: int = 8) -> int:
    """Input copies to cycle through so that consecutive calls do not find theirs in L2."""
    if bytes_per_call <= 0:
        raise ValueError(f"bytes_per_call must be positive, got {bytes_per_call}")
    return max(1, min(most, math.ceil(3 * l2_bytes / bytes_per_call)))


def repeated(calls: list, at_least: int) -> list:
    """`calls` cycled to at least `at_least` entries: a timed graph of one large kernel also
    times the replay's fixed cost (about 10 us on an H100: graph launch and the cross-stream
    events), which made the first profiles' GEMM and attention latencies 10-30% high where
    only one or two input copies fit the rotation."""
    if not calls:
        raise ValueError("no calls to repeat")
    return [calls[i % len(calls)] for i in range(max(at_least, len(calls)))]


def device_name(gpu_name: str) -> str:
    """The profile name pipedecode uses for a CUDA device name ('NVIDIA H100 80GB HBM3' -> 'h100')."""
    low = gpu_name.lower()
    for key in ("h200", "h100", "a100", "rtx 4090", "l40s", "b200"):
        if key in low:
            return key.replace(" ", "")
    return "".join(ch for ch in low.replace("nvidia", "") if ch.isalnum()) or "gpu"


class CudaTimer:
    """The GPU side of `Timer`: pipedecode's kernels on green-context partitions, graph-timed."""

    def __init__(self, device_index: int = 0, reps: int = 15, warmup: int = 3):
        import torch

        from pipedecode.runtime import partitions

        self._torch, self._partitions = torch, partitions
        self.index, self.reps, self.warmup = device_index, reps, warmup
        props = torch.cuda.get_device_properties(device_index)
        self.props = props
        self.total = props.multi_processor_count
        self.l2_bytes = int(getattr(props, "L2_cache_size", 50 * 2 ** 20))
        self.support, self.route = partitions.partition_support(device_index)
        self._parts: dict[int, object] = {}
        self._pairs: dict[int, object] = {}
        self._inputs: tuple = (None, None)

    def facts(self) -> DeviceFacts:
        smallest, step = 8, 8
        if self.support:
            part = self.partition(1)
            smallest, step = part.min_sms, part.granularity
        return DeviceFacts(device_name(self.props.name), f"{self.props.name}, measured by "
                           f"pipedecode profile (partitions: {self.route})", self.total, step,
                           smallest, int(self.props.total_memory))

    # ---- partitions and timing --------------------------------------------------------
    def partition(self, sm_count: int):
        if sm_count not in self._parts:
            if sm_count >= self.total or not self.support:
                self._parts[sm_count] = self._partitions.make_partition(self.total,
                                                                        device_index=self.index)
            else:
                self._parts[sm_count] = self._partitions.make_partition(sm_count,
                                                                        device_index=self.index)
        return self._parts[sm_count]

    def granted_sms(self, sm_count: int) -> int:
        return self.partition(sm_count).granted_sms

    def graph(self, calls: list, stream):
        torch = self._torch
        with torch.cuda.stream(stream):
            for call in calls:                   # warm-up: compile and allocate outside capture
                call()
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):         # capture_begin: no gc.collect per capture
            graph.capture_begin()
            try:
                for call in calls:
                    call()
            finally:
                graph.capture_end()
        return graph

    def replay_us(self, runs: list, per_graph: int) -> float:
        """Median microseconds per call of the graphs in `runs` [(graph, stream)], run together."""
        torch = self._torch
        current = torch.cuda.current_stream(self.index)
        samples = []
        for i in range(self.warmup + self.reps):
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record(current)
            done = []
            for graph, stream in runs:
                stream.wait_event(start)
                with torch.cuda.stream(stream):
                    graph.replay()
                event = torch.cuda.Event()
                event.record(stream)
                done.append(event)
            for event in done:
                current.wait_event(event)
            end.record(current)
            end.synchronize()
            if i >= self.warmup:
                samples.append(start.elapsed_time(end) * 1e3 / per_graph)
        return statistics.median(samples)

    def time_calls(self, calls: list, sm_count: int) -> float:
        """Median microseconds per call of `calls` (one graph, cycled to at least MIN_CALLS
        calls) on a partition of sm_count SMs."""
        calls = repeated(calls, MIN_CALLS)
        part = self.partition(sm_count)
        return self.replay_us([(self.graph(calls, part.stream), part.stream)], len(calls))

    def _cached(self, key: tuple, make: Callable[[], tuple]) -> tuple:
        if self._inputs[0] != key:
            self._inputs = (None, None)
            self._torch.cuda.empty_cache()
            self._inputs = (key, make())
        return self._inputs[1]

    def _randn(self, *shape, scale: float = 1.0):
        torch = self._torch
        return (torch.randn(*shape, device=f"cuda:{self.index}") * scale).to(torch.bfloat16)

    # ---- the measurements ---------------------------------------------------------------
    def gemm_us(self, tokens: int, n: int, k: int, sm_count: int) -> float:
        from pipedecode.runtime import kernels

        def make():
            copies = rotations((tokens * k + n * k + tokens * n) * 2, self.l2_bytes)
            return [(self._randn(tokens, k), self._randn(n, k, scale=k ** -0.5),
                     self._randn(tokens, n)) for _ in range(copies)]

        sets = self._cached(("gemm", tokens, n, k), make)
        sms = self.granted_sms(sm_count)
        calls = [lambda x=x, w=w, o=o: kernels.linear(x, w, sm_count=sms, out=o) for x, w, o in sets]
        return self.time_calls(calls, sm_count)

    def _attention_calls(self, batch, context, heads, kv_heads, head_dim, sms):
        from pipedecode.runtime import kernels

        torch = self._torch

        def make():
            kv = 2 * batch * kv_heads * context * head_dim * 2
            lens = torch.full((batch,), context, dtype=torch.int32, device=f"cuda:{self.index}")
            return [(self._randn(batch, heads, head_dim),
                     self._randn(batch, kv_heads, context, head_dim),
                     self._randn(batch, kv_heads, context, head_dim),
                     lens, self._randn(batch, heads, head_dim))
                    for _ in range(rotations(kv, self.l2_bytes))]

        sets = self._cached(("attention", batch, context, heads, kv_heads, head_dim), make)
        return [lambda s=s: kernels.decode_attention(s[0], s[1], s[2], s[3], sm_count=sms,
                                                     out=s[4], max_context_len=context)
                for s in sets]

    def attention_us(self, batch, context, heads, kv_heads, head_dim, sm_count) -> float:
        calls = self._attention_calls(batch, context, heads, kv_heads, head_dim,
                                      self.granted_sms(sm_count))
        return self.time_calls(calls, sm_count)

    def corun_us(self, memory_sms, compute_sms, model, tokens, context):
        from pipedecode.runtime import kernels

        shape = model_shape(model)
        if memory_sms not in self._pairs:
            self._pairs[memory_sms] = self._partitions.make_partitions(
                memory_sms, compute_sms, device_index=self.index)
        pair = self._pairs[memory_sms]
        attn = self._attention_calls(tokens, context, shape.num_heads, shape.num_kv_heads,
                                     shape.head_dim, pair.memory.granted_sms)
        weights = [(self._randn(lin.n, lin.k, scale=lin.k ** -0.5), self._randn(tokens, lin.n))
                   for lin in shape.linears()]
        xs = {lin.k: self._randn(tokens, lin.k) for lin in shape.linears()}
        sms = pair.compute.granted_sms
        gemms = [lambda w=w, o=o: kernels.linear(xs[w.shape[1]], w, sm_count=sms, out=o)
                 for w, o in weights]
        graph_a = (self.graph(attn, pair.memory.stream), pair.memory.stream)
        graph_g = (self.graph(gemms, pair.compute.stream), pair.compute.stream)
        alone_a = self.replay_us([graph_a], 1)
        alone_g = self.replay_us([graph_g], 1)
        together = self.replay_us([graph_a, graph_g], 1)
        return alone_a, alone_g, together

    def stream_bytes_per_s(self, sm_count: int) -> float:
        from pipedecode.runtime.kernels import _elementwise

        x = self._cached(("stream",), lambda: (self._randn(512 * 2 ** 20),))[0]   # 1 GiB
        sms = self.granted_sms(sm_count)
        us = self.time_calls([lambda: _elementwise.stream_read(x, sms)], sm_count)
        return x.numel() * 2 / (us * 1e-6)

    def peak_flops_per_s(self) -> float:
        size = 8192
        a, b = self._cached(("peak",), lambda: (self._randn(size, size), self._randn(size, size)))
        us = self.time_calls([lambda: a @ b], self.total)
        return 2 * size ** 3 / (us * 1e-6)

    def copy_bytes_per_s(self) -> float:
        src, dst = self._cached(("copy",), lambda: (self._randn(512 * 2 ** 20),
                                                     self._randn(512 * 2 ** 20)))
        us = self.time_calls([lambda: dst.copy_(src)], self.total)
        return 2 * src.numel() * 2 / (us * 1e-6)

    def launch_us(self) -> float:
        from pipedecode.runtime import kernels

        x, w, o = self._cached(("launch",), lambda: (self._randn(1, 256), self._randn(256),
                                                      self._randn(1, 256)))
        calls = [lambda: kernels.rms_norm(x, w, 1e-5, out=o)] * 32
        return self.time_calls(calls, self.total)
