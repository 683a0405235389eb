"""The executor: runs a Schedule's decode step, interleaved on two SM partitions or sequentially.

Owns `Executor`: set-up once (static buffers and KV cache through `DecodeStep`, the slot program,
partition streams, CUDA graphs), then a cheap `run()` per step that replays the graphs (or launches
the program). Interleaved mode puts each micro-batch's attention on the memory partition's stream
and pre/post_attn on the compute partition's stream, with a dependency for every cross-stream edge
(attention k after pre_attn k: `ready[k]`; post_attn k after attention k: `done[k]`).

Graphs (`graphs=`): "one" (the default) captures both partitions' streams as one graph, forked
and joined by CUDA events; each kernel node keeps its stream's green context. "per_partition"
captures each partition's stream as its own graph, replayed side by side; their cross-stream edges
are flags in GPU memory (`stream_flags.StreamFlags`), since an event wait in one graph cannot see
a record in a graph launched after it. Measured on an H100 (Llama-3-8B, 32/100 SMs), the flags'
waits make per-partition graphs 1.2-3.4% slower than one graph, hence the default. Eager launches
use events. Sequential mode (the baseline and the fallback) runs the same kernels
for the whole batch on one stream, one graph. Knows nothing of how a Schedule is planned: it reads
mode, memory_sms, compute_sms and micro_batches (request_ids) and the stages' partitions.
"""

from __future__ import annotations

from typing import Any

import torch

from pipedecode.errors import PartitionUnavailableError
from pipedecode.runtime.ops import KernelSet
from pipedecode.runtime.partition_streams import PartitionStreams, open_partition_streams
from pipedecode.runtime.program import (COMPUTE, Op, RowLayout, Slot, build_program,
                                        pattern_mismatch, serial_order, stage_partitions)
from pipedecode.runtime.step import DecodeStep
from pipedecode.runtime.stream_flags import EventSync, StreamFlags
from pipedecode.runtime.timing import capture, replay_together, time_us
from pipedecode.runtime.weights import PackedWeights


def run_op(step: DecodeStep, op: Op, layout: RowLayout, sm_count: int | None = None) -> None:
    """Launch one stage of one micro-batch on the current stream."""
    rows = layout.rows(op.micro_batch)
    if op.stage in ("embed", "head"):
        getattr(step, op.stage)(rows, sm_count)
    else:
        getattr(step, op.stage)(op.layer, rows, sm_count)


def run_serial(step: DecodeStep, program: tuple[Slot, ...], layout: RowLayout) -> torch.Tensor:
    """The interleaved program on the current stream in a valid serial order (a CPU dry run)."""
    for op in serial_order(program):
        run_op(step, op, layout)
    return step.logits


def layout_of(schedule: Any, batch_size: int) -> RowLayout:
    """The buffer-row layout of a Schedule's micro-batches (one micro-batch when it has none)."""
    micro_batches = list(getattr(schedule, "micro_batches", None) or ())
    if not micro_batches:
        return RowLayout.single(batch_size)
    micro_batches.sort(key=lambda mb: getattr(mb, "index", 0))
    return RowLayout.from_micro_batches([list(mb.request_ids) for mb in micro_batches],
                                        batch_size)


GRAPH_MODES = ("one", "per_partition")   # the first is the default


class Executor:
    """A compiled decode step for `batch_size` requests; see the module docstring."""

    def __init__(self, weights: PackedWeights, batch_size: int, max_context: int, *,
                 schedule: Any = None, kernels: KernelSet | None = None,
                 use_graphs: bool = True, streams: PartitionStreams | None = None,
                 step: DecodeStep | None = None, autotune: bool = False,
                 graphs: str = GRAPH_MODES[0]) -> None:
        """`step`: share another executor's buffers and KV cache (benchmarks, A/B checks).
        `autotune`: at the first step, time the interleaved graphs against a sequential graph of
        the same step and keep the faster (the guard against a plan that cannot pay here).
        `graphs`: "one" or "per_partition" (see the module docstring)."""
        if graphs not in GRAPH_MODES:
            raise ValueError(f"graphs must be one of {GRAPH_MODES}, got {graphs!r}")
        self.step = step or DecodeStep(weights, batch_size, max_context, kernels=kernels)
        self.schedule = schedule
        self.layout = layout_of(schedule, batch_size) if schedule is not None \
            else RowLayout.single(batch_size)
        self.program = build_program(len(self.layout.bounds), self.step.num_layers)
        self.fallback_reason: str | None = None
        self.streams: PartitionStreams | None = None
        self.placement = {"pre_attn": COMPUTE, "attention": "memory", "post_attn": COMPUTE}
        self.mode = self._choose_mode(streams)
        cuda = weights.device.type == "cuda"
        self.use_graphs = bool(use_graphs and cuda)
        n_attn = sum(slot.memory is not None for slot in self.program)
        self._edges = {"ready": n_attn, "done": n_attn}
        self._events = EventSync(self._edges) if self.mode != "sequential" else None
        self.graph_mode = graphs if self.mode == "interleaved" else "one"
        self._graph: torch.cuda.CUDAGraph | None = None
        self._side_graphs: tuple | None = None      # ((graph, stream), ...) per partition
        self.flags: StreamFlags | None = None
        self.autotune = bool(autotune and self.mode == "interleaved" and self.use_graphs)
        self.measured_us: dict[str, float] = {}

    # Set-up ---------------------------------------------------------------------------------
    def _choose_mode(self, streams: PartitionStreams | None) -> str:
        schedule = self.schedule
        if schedule is None or getattr(schedule, "mode", "sequential") != "interleaved":
            return "sequential"
        if len(self.layout.bounds) < 2:
            self.fallback_reason = "the schedule has fewer than two micro-batches"
            return "sequential"
        if self.step.weights.device.type != "cuda":
            self.fallback_reason = "no CUDA device: SM partitions need a GPU"
            return "sequential"
        self.placement = stage_partitions(schedule)
        mismatch = pattern_mismatch(schedule)
        if mismatch:
            self.fallback_reason = f"the schedule's slot pattern is not one this executor runs: " \
                                   f"{mismatch}"
            return "sequential"
        try:
            self.streams = streams or open_partition_streams(
                int(schedule.memory_sms), int(schedule.compute_sms),
                self.step.weights.device)
        except PartitionUnavailableError as exc:
            self.fallback_reason = str(exc)
            return "sequential"
        return "interleaved"

    def _attention_side(self) -> tuple[torch.cuda.Stream, int]:
        s = self.streams
        if self.placement["attention"] == COMPUTE:
            return s.compute_stream, s.compute_sms
        return s.memory_stream, s.memory_sms

    def _compute_side(self) -> tuple[torch.cuda.Stream, int]:
        s = self.streams
        if self.placement["attention"] == COMPUTE:
            return s.memory_stream, s.memory_sms
        return s.compute_stream, s.compute_sms

    # Launch ---------------------------------------------------------------------------------
    def _launch(self) -> None:
        if self.mode == "sequential":
            self.step.run_sequential()
        else:
            self._launch_interleaved()

    def _launch_interleaved(self) -> None:
        """Both partitions' streams, forked from and joined to the current stream, with events."""
        main = torch.cuda.current_stream()
        mem, comp = self._attention_side()[0], self._compute_side()[0]
        mem.wait_stream(main)
        comp.wait_stream(main)
        self._issue(self._events, ("memory", "compute"))
        main.wait_stream(mem)
        main.wait_stream(comp)

    def _issue(self, sync: EventSync | StreamFlags, sides: tuple[str, ...]) -> None:
        """The program's ops of `sides` on their streams, in slot order (an event's record is
        enqueued before its wait). Attention k waits for ready[k] (pre_attn k); post_attn k waits
        for done[k] (attention k)."""
        mem, mem_sms = self._attention_side()
        comp, comp_sms = self._compute_side()
        n = len(self.layout.bounds)
        for j, slot in enumerate(self.program):
            if slot.memory is not None and "memory" in sides:
                k = j - 1
                with torch.cuda.stream(mem):
                    sync.wait("ready", k, mem)
                    run_op(self.step, slot.memory, self.layout, mem_sms)
                    sync.signal("done", k, mem)
            if "compute" not in sides:
                continue
            with torch.cuda.stream(comp):
                for op in slot.compute:
                    if op.stage == "post_attn":
                        sync.wait("done", op.layer * n + op.micro_batch, comp)
                    run_op(self.step, op, self.layout, comp_sms)
                    if op.stage == "pre_attn":
                        sync.signal("ready", op.layer * n + op.micro_batch, comp)

    def capture(self, warmup: int = 2) -> None:
        """Warm up (Triton compiles, cuBLAS handles) and capture the step as CUDA graphs.

        Every kernel node keeps the green context of the stream it was captured from. "one":
        captured from the compute partition's stream with the memory partition's stream forked
        in by events. "per_partition": each partition's stream captured alone, with flags.
        """
        if not self.use_graphs:
            return
        for _ in range(warmup):
            self._launch()
        torch.cuda.synchronize()
        if self.mode == "interleaved" and self.graph_mode == "per_partition":
            self._capture_per_partition()
            return
        graph = torch.cuda.CUDAGraph()
        capture_stream = self._compute_side()[0] if self.mode == "interleaved" else None
        with torch.cuda.graph(graph, stream=capture_stream):
            self._launch()
        torch.cuda.synchronize()
        self._graph = graph

    def _capture_per_partition(self) -> None:
        self.flags = self.flags or StreamFlags(self._edges, self.step.weights.device)
        pool = torch.cuda.graph_pool_handle()
        graphs = []
        for side, stream in (("compute", self._compute_side()[0]),
                             ("memory", self._attention_side()[0])):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream, pool=pool):
                self._issue(self.flags, (side,))
            graphs.append((graph, stream))
        torch.cuda.synchronize()
        self._side_graphs = tuple(graphs)

    def _replay(self) -> None:
        if self._side_graphs is None:
            self._graph.replay()
        else:
            replay_together(self._side_graphs)

    @property
    def captured(self) -> bool:
        return self._graph is not None or self._side_graphs is not None

    # Per step ---------------------------------------------------------------------------------
    def set_inputs(self, tokens: torch.Tensor, context_lens: torch.Tensor, **left_padded) -> None:
        """Inputs in buffer-row order (see `layout.order`): token ids and lengths incl. the token
        (and rope_positions, context_starts for a left-padded step, see DecodeStep.set_inputs)."""
        self.step.set_inputs(tokens, context_lens, **left_padded)

    @torch.no_grad()
    def run(self) -> torch.Tensor:
        """One decode step; returns the static logits buffer [batch, vocab] in buffer-row order."""
        if self.use_graphs and not self.captured:
            self.capture()
            if self.autotune:
                self._choose_by_measurement()
        if self.captured:
            self._replay()
        else:
            self._launch()
        return self.step.logits

    def _choose_by_measurement(self, replays: int = 4) -> None:
        """Keep the interleaved graph only if it beats sequential on this GPU, inputs and batch.
        Replays rewrite the same KV positions, so timing them moves no state."""
        sequential = capture(self.step.run_sequential)
        inter_us = time_us(self._replay, repeats=replays)
        seq_us = time_us(sequential.replay, repeats=replays)
        self.measured_us = {"interleaved": inter_us, "sequential": seq_us}
        if inter_us >= seq_us:
            self.mode, self._graph, self._side_graphs = "sequential", sequential, None
            self.graph_mode = "one"
            self.fallback_reason = (f"measured interleaved {inter_us:.0f} us >= sequential "
                                    f"{seq_us:.0f} us for this batch on this GPU")

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"mode": self.mode, "graphs": self.use_graphs,
                                "graph_mode": self.graph_mode if self.use_graphs else None,
                                "micro_batches": [b - a for a, b in self.layout.bounds],
                                "kernels": self.step.kernels.name,
                                "kernels_provided": list(self.step.kernels.provided)}
        if self.streams is not None:
            info.update(memory_sms=self.streams.memory_sms, compute_sms=self.streams.compute_sms,
                        partition_source=self.streams.source)
        if self.measured_us:
            info["measured_us"] = self.measured_us
        if self.fallback_reason:
            info["fallback_reason"] = self.fallback_reason
        return info
