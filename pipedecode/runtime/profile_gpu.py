"""Measuring a device profile on this GPU: the GPU side of `profiles.measure.Timer`.

Owns `CudaTimer`: pipedecode's own kernels (GEMMs, decode attention, a streaming read, RMSNorm)
launched on green-context partitions of the requested SM counts, each measurement one CUDA graph
of at least `timing.MIN_CALLS` calls cycling through enough copies of its inputs that L2 cannot
hold them, timed by `runtime.timing` (warm-up, CUDA events, median of repeats). Co-resident pairs
are a `DecodeStep`'s own stages in the lanes the executor gives them (`runtime.coresident`): one
micro-batch's attention on one plain stream beside another's post_attn + pre_attn on a second,
every SM shared, for CORESIDENT_LAYERS layers. What to measure
and how the tables are built is `profiles.measure` (`MeasureSpec`, `build_profile`). Needs CUDA.
"""

from __future__ import annotations

from typing import Callable

import torch

from pipedecode.models import model_shape
from pipedecode.profiles.measure import DeviceFacts
from pipedecode.profiles.registry import gpu_key
from pipedecode.runtime import kernels, partitions, timing


CORESIDENT_LAYERS = 4       # layers per co-resident graph: each side runs a few milliseconds


class CudaTimer:
    """`profiles.measure.Timer` on a CUDA GPU: the runtime's kernels on SM partitions."""

    def __init__(self, device_index: int = 0, reps: int = 15, warmup: int = 3):
        self.index, self.reps, self.warmup = device_index, reps, warmup
        props = torch.cuda.get_device_properties(device_index)
        self.props = props
        self.total = props.multi_processor_count
        self.l2_bytes = timing.l2_bytes(device_index)
        self.support, self.route = partitions.partition_support(device_index)
        self._parts: dict[int, object] = {}
        self._pairs: dict[int, object] = {}
        self._inputs: tuple = (None, None)
        self._weights: tuple = (None, None)     # (model, random weights) of co-resident pairs

    def facts(self) -> DeviceFacts:
        from pipedecode.runtime.kernels._attention_tma import tma_attention_support

        smallest, step = 8, 8
        if self.support:
            part = self.partition(1)
            smallest, step = part.min_sms, part.granularity
        ok, why = tma_attention_support(self.index)
        return DeviceFacts(gpu_key(self.props.name), f"{self.props.name}, measured by "
                           f"pipedecode profile (partitions: {self.route})", self.total, step,
                           smallest, int(self.props.total_memory),
                           coresident_unavailable=None if ok else why)

    # ---- partitions and timing --------------------------------------------------------
    def partition(self, sm_count: int):
        if sm_count not in self._parts:
            whole = sm_count >= self.total or not self.support
            self._parts[sm_count] = partitions.make_partition(
                self.total if whole else sm_count, device_index=self.index)
        return self._parts[sm_count]

    def granted_sms(self, sm_count: int) -> int:
        return self.partition(sm_count).granted_sms

    def graph(self, calls: list, stream) -> torch.cuda.CUDAGraph:
        with torch.cuda.device(self.index):
            return timing.capture(calls, stream)

    def replay_us(self, runs: list, per_graph: int) -> float:
        """Median microseconds per call of the graphs in `runs` [(graph, stream)], replayed side
        by side (`timing.replay_together`), each holding `per_graph` calls."""
        with torch.cuda.device(self.index):
            us = timing.time_us(lambda: timing.replay_together(runs), repeats=self.reps,
                                warmup=self.warmup)
        return us / per_graph

    def time_calls(self, calls: list, sm_count: int) -> float:
        """Median microseconds per call of `calls` (one graph, cycled to at least MIN_CALLS
        calls) on a partition of sm_count SMs."""
        calls = timing.repeated(calls, timing.MIN_CALLS)
        part = self.partition(sm_count)
        return self.replay_us([(self.graph(calls, part.stream), part.stream)], len(calls))

    def _cached(self, key: tuple, make: Callable[[], tuple]) -> tuple:
        if self._inputs[0] != key:
            self._inputs = (None, None)
            torch.cuda.empty_cache()
            self._inputs = (key, make())
        return self._inputs[1]

    def _randn(self, *shape, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device=f"cuda:{self.index}") * scale).to(torch.bfloat16)

    # ---- the measurements ---------------------------------------------------------------
    def gemm_us(self, tokens: int, n: int, k: int, sm_count: int) -> float:
        def make():
            copies = timing.rotations((tokens * k + n * k + tokens * n) * 2, self.l2_bytes)
            return [(self._randn(tokens, k), self._randn(n, k, scale=k ** -0.5),
                     self._randn(tokens, n)) for _ in range(copies)]

        sets = self._cached(("gemm", tokens, n, k), make)
        sms = self.granted_sms(sm_count)
        calls = [lambda x=x, w=w, o=o: kernels.linear(x, w, sm_count=sms, out=o)
                 for x, w, o in sets]
        return self.time_calls(calls, sm_count)

    def _attention_calls(self, batch, context, heads, kv_heads, head_dim, sms):
        def make():
            kv = 2 * batch * kv_heads * context * head_dim * 2
            lens = torch.full((batch,), context, dtype=torch.int32, device=f"cuda:{self.index}")
            return [(self._randn(batch, heads, head_dim),
                     self._randn(batch, kv_heads, context, head_dim),
                     self._randn(batch, kv_heads, context, head_dim),
                     lens, self._randn(batch, heads, head_dim))
                    for _ in range(timing.rotations(kv, self.l2_bytes))]

        sets = self._cached(("attention", batch, context, heads, kv_heads, head_dim), make)
        return [lambda s=s: kernels.decode_attention(s[0], s[1], s[2], s[3], sm_count=sms,
                                                     out=s[4], max_context_len=context)
                for s in sets]

    def attention_us(self, batch, context, heads, kv_heads, head_dim, sm_count) -> float:
        calls = self._attention_calls(batch, context, heads, kv_heads, head_dim,
                                      self.granted_sms(sm_count))
        return self.time_calls(calls, sm_count)

    def corun_us(self, memory_sms, compute_sms, model, tokens, context):
        """(attention alone, GEMMs alone, both at once) in microseconds, on a pair of
        partitions: a micro-batch's attention beside a layer's GEMMs of another."""
        shape = model_shape(model)
        if memory_sms not in self._pairs:
            self._pairs[memory_sms] = partitions.make_partitions(
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

    def coresident_us(self, model, tokens, context, smem_bytes):
        """Per decoder layer, microseconds: (attention alone, post_attn + pre_attn alone, both at
        once) co-resident, then (attention, post_attn + pre_attn) as sequential mode runs them
        (the whole GPU, the default kernels): micro-batch A's attention over `tokens` requests of
        `context` keys beside micro-batch B's compute stages on `tokens` rows, one phase of the
        executor's program, of a random-weight `model` step of CORESIDENT_LAYERS layers."""
        from pipedecode.runtime.coresident import open_coresident_streams

        step = self._coresident_step(model, tokens, context)
        sides = open_coresident_streams(step, smem_bytes)
        a, b, layers = slice(0, tokens), slice(tokens, 2 * tokens), range(step.num_layers)

        def attention(lane):
            return [lambda layer=layer: step.attention(layer, a, lane) for layer in layers]

        def compute(lane):
            return [lambda layer=layer: (step.post_attn(layer, b, lane),
                                         step.pre_attn(layer, b, lane)) for layer in layers]

        mem, comp, seq = sides.memory_stream, sides.compute_stream, self.partition(self.total)
        runs = {"attention": (self.graph(attention(sides.attention_lane), mem), mem),
                "compute": (self.graph(compute(sides.compute_lane), comp), comp),
                "attention_seq": (self.graph(attention(None), seq.stream), seq.stream),
                "compute_seq": (self.graph(compute(None), seq.stream), seq.stream)}
        n = step.num_layers
        times = [self.replay_us([runs["attention"]], n), self.replay_us([runs["compute"]], n),
                 self.replay_us([runs["attention"], runs["compute"]], n),
                 self.replay_us([runs["attention_seq"]], n),
                 self.replay_us([runs["compute_seq"]], n)]
        del runs, step
        torch.cuda.empty_cache()
        return tuple(times)

    def _coresident_step(self, model: str, tokens: int, context: int):
        """A DecodeStep of two micro-batches of `tokens` rows (random caches, every request at
        `context` keys) on random CORESIDENT_LAYERS-layer weights of `model`, kept per model."""
        from pipedecode.runtime.step import DecodeStep
        from pipedecode.runtime.weights import random_weights

        held = self._weights[1]
        if self._weights[0] != model or held.max_positions < context + 16:
            self._inputs = self._weights = (None, None)
            torch.cuda.empty_cache()
            self._weights = (model, random_weights(
                model_shape(model), max_positions=max(4096, context + 16),
                device=f"cuda:{self.index}", num_layers=CORESIDENT_LAYERS))
        step = DecodeStep(self._weights[1], 2 * tokens, context + 16)
        for cache in step.k_cache + step.v_cache:
            cache.normal_()
        step.set_inputs(torch.zeros(2 * tokens, dtype=torch.long, device=step.tokens.device),
                        torch.full((2 * tokens,), context, dtype=torch.int32,
                                   device=step.tokens.device))
        return step

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
        x, w, o = self._cached(("launch",), lambda: (self._randn(1, 256), self._randn(256),
                                                      self._randn(1, 256)))
        calls = [lambda: kernels.rms_norm(x, w, 1e-5, out=o)] * 32
        return self.time_calls(calls, self.total)
