"""The executor: runs a Schedule's decode step, interleaved on two SM partitions or sequentially.

Owns `Executor`: set-up once (static buffers and KV cache through `DecodeStep`, the slot program,
partition streams, one CUDA event pair per attention op, CUDA graphs), then a cheap `run()` per step
that replays the graph (or launches the program). Interleaved mode puts each micro-batch's
attention on the memory partition's stream and pre/post_attn on the compute partition's stream, an
event for every cross-stream dependency. Sequential mode (the baseline and the fallback) runs the
same kernels for the whole batch on one stream. Knows nothing of how a Schedule is planned: it reads
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


def _graph_us(graph: torch.cuda.CUDAGraph, replays: int) -> float:
    """Median replay time (CUDA events); replays rewrite the same KV positions, so no state moves."""
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return sorted(times)[len(times) // 2]


class Executor:
    """A compiled decode step for `batch_size` requests; see the module docstring."""

    def __init__(self, weights: PackedWeights, batch_size: int, max_context: int, *,
                 schedule: Any = None, kernels: KernelSet | None = None,
                 use_graphs: bool = True, streams: PartitionStreams | None = None,
                 step: DecodeStep | None = None, autotune: bool = False) -> None:
        """`step`: share another executor's buffers and KV cache (benchmarks, A/B checks).
        `autotune`: at the first step, time the interleaved graph against a sequential graph of
        the same step and keep the faster (the guard against a plan that cannot pay here)."""
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
        self._ready = [torch.cuda.Event() for _ in range(n_attn)] if self.mode != "sequential" else []
        self._done = [torch.cuda.Event() for _ in range(n_attn)] if self.mode != "sequential" else []
        self._graph: torch.cuda.CUDAGraph | None = None
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
        """Attention k waits for pre_attn k (event ready[k]); post_attn waits for done[k]."""
        main = torch.cuda.current_stream()
        mem, mem_sms = self._attention_side()
        comp, comp_sms = self._compute_side()
        n = len(self.layout.bounds)
        mem.wait_stream(main)
        comp.wait_stream(main)
        for j, slot in enumerate(self.program):
            if slot.memory is not None:
                k = j - 1
                with torch.cuda.stream(mem):
                    mem.wait_event(self._ready[k])
                    run_op(self.step, slot.memory, self.layout, mem_sms)
                    self._done[k].record(mem)
            with torch.cuda.stream(comp):
                for op in slot.compute:
                    if op.stage == "post_attn":
                        comp.wait_event(self._done[op.layer * n + op.micro_batch])
                    run_op(self.step, op, self.layout, comp_sms)
                    if op.stage == "pre_attn":
                        self._ready[op.layer * n + op.micro_batch].record(comp)
        main.wait_stream(mem)
        main.wait_stream(comp)

    def capture(self, warmup: int = 2) -> None:
        """Warm up (Triton compiles, cuBLAS handles) and capture the whole step as one graph.

        Interleaved: captured from the compute partition's stream with the memory partition's
        stream forked in by events, so every kernel node keeps its stream's green context.
        """
        if not self.use_graphs:
            return
        for _ in range(warmup):
            self._launch()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        capture_stream = self._compute_side()[0] if self.mode == "interleaved" else None
        with torch.cuda.graph(graph, stream=capture_stream):
            self._launch()
        torch.cuda.synchronize()
        self._graph = graph

    # Per step ---------------------------------------------------------------------------------
    def set_inputs(self, tokens: torch.Tensor, context_lens: torch.Tensor, **left_padded) -> None:
        """Inputs in buffer-row order (see `layout.order`): token ids and lengths incl. the token
        (and rope_positions, context_starts for a left-padded step, see DecodeStep.set_inputs)."""
        self.step.set_inputs(tokens, context_lens, **left_padded)

    @torch.no_grad()
    def run(self) -> torch.Tensor:
        """One decode step; returns the static logits buffer [batch, vocab] in buffer-row order."""
        if self.use_graphs and self._graph is None:
            self.capture()
            if self.autotune:
                self._choose_by_measurement()
        if self._graph is not None:
            self._graph.replay()
        else:
            self._launch()
        return self.step.logits

    def _choose_by_measurement(self, replays: int = 4) -> None:
        """Keep the interleaved graph only if it beats sequential on this GPU, inputs and batch."""
        sequential = torch.cuda.CUDAGraph()
        self.step.run_sequential()
        torch.cuda.synchronize()
        with torch.cuda.graph(sequential):
            self.step.run_sequential()
        inter_us = _graph_us(self._graph, replays)
        seq_us = _graph_us(sequential, replays)
        self.measured_us = {"interleaved": inter_us, "sequential": seq_us}
        if inter_us >= seq_us:
            self.mode, self._graph = "sequential", sequential
            self.fallback_reason = (f"measured interleaved {inter_us:.0f} us >= sequential "
                                    f"{seq_us:.0f} us for this batch on this GPU")

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"mode": self.mode, "graphs": self.use_graphs,
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
