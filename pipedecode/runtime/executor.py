"""The executor: runs a Schedule's decode step, interleaved on two SM partitions, co-resident
on two streams sharing every SM, or sequentially.

Owns `Executor`: set-up once (static buffers and KV cache through `DecodeStep`, the slot program,
the two sides' streams, CUDA graphs), then a cheap `run()` per step that replays the graphs (or
launches the program). Interleaved and co-resident mode run the same slot program: each
micro-batch's attention on the memory side's stream and pre/post_attn on the compute side's,
with a dependency for every cross-stream edge (attention k after pre_attn k: `ready[k]`;
post_attn k after attention k: `done[k]`). Interleaved: the sides are two SM partitions (green
contexts), each stage told its partition's SM count. Co-resident (`coresident.py`): two plain
streams, every SM shared, the attention the persistent TMA kernel within the schedule's
`attention_smem_bytes` (one program per SM) and the GEMMs the persistent Triton matmul with tiles
within what it leaves (each stage told its `lane.Lane`); where the TMA kernel cannot run (CPU, a
GPU other than Hopper) the executor says why and runs sequentially.

Graphs (`graphs=`): "one" (the default) captures both partitions' streams as one graph, forked
and joined by CUDA events; each kernel node keeps its stream's green context. "per_partition"
captures each partition's stream as its own graph, replayed side by side; their cross-stream edges
are flags in GPU memory (`stream_flags.StreamFlags`), since an event wait in one graph cannot see
a record in a graph launched after it. Measured on an H100 (Llama-3-8B, 32/100 SMs), the flags'
waits make per-partition graphs 1.2-3.4% slower than one graph, hence the default. Eager launches
use events. Co-resident mode captures "one" graph the same way (both plain streams, forked and
joined by events). Sequential mode (the baseline and the fallback) runs the same kernels
for the whole batch on one stream, one graph. `autotune` (the guard) times the interleaved or
co-resident graph against a sequential one and keeps the faster. Knows nothing of how a Schedule
is planned: it reads mode, memory_sms, compute_sms, attention_smem_bytes and micro_batches
(request_ids) and the stages' partitions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from pipedecode.errors import PartitionUnavailableError
from pipedecode.runtime.coresident import (CoresidentStreams, CoresidentUnavailable,
                                           open_coresident_streams)
from pipedecode.runtime.lane import DEFAULT_ATTENTION_SMEM_BYTES, Lane
from pipedecode.runtime.ops import KernelSet
from pipedecode.runtime.partition_streams import PartitionStreams, open_partition_streams
from pipedecode.runtime.program import (COMPUTE, Op, RowLayout, Slot, build_program,
                                        pattern_mismatch, serial_order, stage_partitions)
from pipedecode.runtime.step import DecodeStep
from pipedecode.runtime.stream_flags import EventSync, StreamFlags
from pipedecode.runtime.timing import capture, replay_together, time_us
from pipedecode.runtime.weights import PackedWeights


def run_op(step: DecodeStep, op: Op, layout: RowLayout, lane: Lane | int | None = None) -> None:
    """Launch one stage of one micro-batch on the current stream, its kernels in `lane` (an SM
    count, or a `Lane`)."""
    rows = layout.rows(op.micro_batch)
    if op.stage in ("embed", "head"):
        getattr(step, op.stage)(rows, lane)
    else:
        getattr(step, op.stage)(op.layer, rows, lane)


def run_serial(step: DecodeStep, program: tuple[Slot, ...], layout: RowLayout,
               lanes: dict[str, Lane] | None = None) -> torch.Tensor:
    """The program on the current stream in a valid serial order (a CPU dry run; on a GPU with
    `lanes` {"memory": ..., "compute": ...} the same kernels as the two streams launch)."""
    lanes = lanes or {}
    for op in serial_order(program):
        run_op(step, op, layout, lanes.get("memory" if op.stage == "attention" else "compute"))
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
OVERLAPPED = ("interleaved", "coresident")


class Executor:
    """A compiled decode step for `batch_size` requests; see the module docstring."""

    def __init__(self, weights: PackedWeights, batch_size: int, max_context: int, *,
                 schedule: Any = None, kernels: KernelSet | None = None,
                 use_graphs: bool = True, streams: PartitionStreams | None = None,
                 step: DecodeStep | None = None, autotune: bool = False,
                 graphs: str = GRAPH_MODES[0]) -> None:
        """`step`: share another executor's buffers and KV cache (benchmarks, A/B checks).
        `autotune`: at the first step, time the interleaved or co-resident graphs against a
        sequential graph of the same step and keep the faster (the guard against a plan that
        cannot pay here). `graphs`: "one" or "per_partition" (see the module docstring;
        co-resident mode always captures one graph)."""
        if graphs not in GRAPH_MODES:
            raise ValueError(f"graphs must be one of {GRAPH_MODES}, got {graphs!r}")
        self.step = step or DecodeStep(weights, batch_size, max_context, kernels=kernels)
        self.schedule = schedule
        self.layout = layout_of(schedule, batch_size) if schedule is not None \
            else RowLayout.single(batch_size)
        self.program = build_program(len(self.layout.bounds), self.step.num_layers)
        self.fallback_reason: str | None = None
        self.streams: PartitionStreams | None = None
        self.coresident: CoresidentStreams | None = None
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
        self.autotune = bool(autotune and self.mode in OVERLAPPED and self.use_graphs)
        self.measured_us: dict[str, float] = {}

    # Set-up ---------------------------------------------------------------------------------
    def _choose_mode(self, streams: PartitionStreams | None) -> str:
        schedule = self.schedule
        mode = getattr(schedule, "mode", "sequential") if schedule is not None else "sequential"
        if mode not in OVERLAPPED:
            return "sequential"
        if len(self.layout.bounds) < 2:
            self.fallback_reason = "the schedule has fewer than two micro-batches"
            return "sequential"
        if mode == "interleaved" and self.step.weights.device.type != "cuda":
            self.fallback_reason = "no CUDA device: SM partitions need a GPU"
            return "sequential"
        self.placement = stage_partitions(schedule)
        mismatch = pattern_mismatch(schedule)
        if mismatch:
            self.fallback_reason = f"the schedule's slot pattern is not one this executor runs: " \
                                   f"{mismatch}"
            return "sequential"
        try:
            if mode == "coresident":
                budget = getattr(schedule, "attention_smem_bytes", 0) or \
                    DEFAULT_ATTENTION_SMEM_BYTES
                self.coresident = open_coresident_streams(self.step, budget)
            else:
                self.streams = streams or open_partition_streams(
                    int(schedule.memory_sms), int(schedule.compute_sms),
                    self.step.weights.device)
        except (PartitionUnavailableError, CoresidentUnavailable) as exc:
            self.fallback_reason = str(exc)
            return "sequential"
        return mode

    def _attention_side(self) -> tuple[torch.cuda.Stream, Lane]:
        if self.coresident is not None:
            return self.coresident.memory_stream, self.coresident.attention_lane
        s = self.streams
        if self.placement["attention"] == COMPUTE:
            return s.compute_stream, Lane(s.compute_sms)
        return s.memory_stream, Lane(s.memory_sms)

    def _compute_side(self) -> tuple[torch.cuda.Stream, Lane]:
        if self.coresident is not None:
            return self.coresident.compute_stream, self.coresident.compute_lane
        s = self.streams
        if self.placement["attention"] == COMPUTE:
            return s.memory_stream, Lane(s.memory_sms)
        return s.compute_stream, Lane(s.compute_sms)

    @property
    def lanes(self) -> dict[str, Lane]:
        """Where each side's kernels run ({} in sequential mode): `run_serial`'s lanes."""
        if self.mode == "sequential":
            return {}
        return {"memory": self._attention_side()[1], "compute": self._compute_side()[1]}

    # Launch ---------------------------------------------------------------------------------
    def _launch(self) -> None:
        if self.mode == "sequential":
            self.step.run_sequential()
        else:
            self._launch_overlapped()

    def _launch_overlapped(self) -> None:
        """Both sides' streams, forked from and joined to the current stream, with events."""
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
        mem, mem_lane = self._attention_side()
        comp, comp_lane = self._compute_side()
        n = len(self.layout.bounds)
        for j, slot in enumerate(self.program):
            if slot.memory is not None and "memory" in sides:
                k = j - 1
                with torch.cuda.stream(mem):
                    sync.wait("ready", k, mem)
                    run_op(self.step, slot.memory, self.layout, mem_lane)
                    sync.signal("done", k, mem)
            if "compute" not in sides:
                continue
            with torch.cuda.stream(comp):
                for op in slot.compute:
                    if op.stage == "post_attn":
                        sync.wait("done", op.layer * n + op.micro_batch, comp)
                    run_op(self.step, op, self.layout, comp_lane)
                    if op.stage == "pre_attn":
                        sync.signal("ready", op.layer * n + op.micro_batch, comp)

    def capture(self, warmup: int = 2) -> None:
        """Warm up (Triton compiles, cuBLAS handles) and capture the step as CUDA graphs.

        Every kernel node keeps the green context of the stream it was captured from. "one":
        captured from the compute side's stream with the memory side's stream forked in by
        events. "per_partition": each partition's stream captured alone, with flags.
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
        capture_stream = self._compute_side()[0] if self.mode in OVERLAPPED else None
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
        """Keep the interleaved or co-resident graph only if it beats sequential on this GPU,
        inputs and batch. Replays rewrite the same KV positions, so timing them moves no state."""
        sequential = capture(self.step.run_sequential)
        planned_us = time_us(self._replay, repeats=replays)
        seq_us = time_us(sequential.replay, repeats=replays)
        self.measured_us = {self.mode: planned_us, "sequential": seq_us}
        if planned_us >= seq_us:
            self.fallback_reason = (f"measured {self.mode} {planned_us:.0f} us >= sequential "
                                    f"{seq_us:.0f} us for this batch on this GPU")
            self.mode, self._graph, self._side_graphs = "sequential", sequential, None
            self.graph_mode = "one"

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"mode": self.mode, "graphs": self.use_graphs,
                                "graph_mode": self.graph_mode if self.use_graphs else None,
                                "micro_batches": [b - a for a, b in self.layout.bounds],
                                "kernels": self.step.kernels.name,
                                "kernels_provided": list(self.step.kernels.provided)}
        if self.streams is not None:
            info.update(memory_sms=self.streams.memory_sms, compute_sms=self.streams.compute_sms,
                        partition_source=self.streams.source)
        if self.coresident is not None:
            co = self.coresident
            info.update(attention_smem_bytes=co.attention_smem_bytes,
                        attention_lane=dataclasses.asdict(co.attention_lane),
                        compute_lane=dataclasses.asdict(co.compute_lane))
        if self.measured_us:
            info["measured_us"] = self.measured_us
        if self.fallback_reason:
            info["fallback_reason"] = self.fallback_reason
        return info
