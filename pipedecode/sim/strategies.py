"""One simulated point: a model on N GPUs of a device, joined by a link, run by a strategy.

Owns `SimOptions`, `STRATEGIES` and `simulate_point` -> `PointResult`:
  tdpipe    TD-Pipe: N pipeline stages, S = N micro-batches in flight, the temporal policy
            (temporal disaggregation, greedy prefill on predicted lengths, work stealing in
            the scheduler's decode batches, the decode-to-prefill switch by the intensity
            comparison with the bubble of N stages)
  pipeline  plain pipeline parallelism: the same stages and slots, prefill-first (prefills
            and decodes interleaved as they come)
  tensor    an analytic tensor-parallel estimate (`executors.TensorParallel`) under the
            prefill-first scheduler, one batch in flight
More GPUs than a replica can use (pipeline: one layer per stage at least; tensor: the heads
must split) become data-parallel replicas of the largest replica that divides the GPU count,
each with every R-th request. Knows nothing of files or command lines.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from pipedecode.engine.runner import DEFAULT_BLOCK_SIZE
from pipedecode.models import ModelShape, max_positions
from pipedecode.planner.cost import CostModel
from pipedecode.planner.problem import resolve_model
from pipedecode.profiles.schema import DeviceProfile
from pipedecode.sim import layout as layouts
from pipedecode.sim.engine_costs import HOST_FACTOR, PREFILL_LAUNCH_US_PER_LAYER, EngineCosts
from pipedecode.sim.executors import MemoCostModel, StagePipeline, TensorParallel
from pipedecode.sim.links import Link
from pipedecode.sim.loop import RunResult, SchedulingConfig, VirtualClock, build_scheduler, run
from pipedecode.sim.workloads import Workload

STRATEGIES = ("tdpipe", "pipeline", "tensor")
DEFAULT_SEQS_PER_GPU = 256           # the engine's max_num_seqs, per GPU of a replica


@dataclass(frozen=True)
class SimOptions:
    """seqs_per_gpu: max_num_seqs of a replica is this times its GPUs. micro_batches: slots
    in flight of a pipeline (None: one per stage). kv_blocks: usable KV blocks of a replica
    in place of those its memory holds (a measured engine's pool). host_factor, padding,
    sampling: the engine's costs around the GPU step (`engine_costs.EngineCosts`; host_factor
    0, padding and sampling False: the cost model alone). The rest as in SchedulingConfig."""

    seqs_per_gpu: int = DEFAULT_SEQS_PER_GPU
    max_num_batched_tokens: int = 8192
    micro_batches: int | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    predictor: str = "online"
    step_overhead_us: float = 0.0
    kv_blocks: int | None = None
    host_factor: float = HOST_FACTOR
    padding: bool = True
    sampling: bool = True
    prefill_launch: bool = True
    prefill_graphs: bool = True

    def __post_init__(self) -> None:
        for name in ("seqs_per_gpu", "max_num_batched_tokens", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SimOptions.{name} must be positive, got {getattr(self, name)}")
        for name in ("step_overhead_us", "host_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"SimOptions.{name} must be a number >= 0, got {value}")
        for name in ("micro_batches", "kv_blocks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"SimOptions.{name} must be positive, got {value}")


@dataclass(frozen=True)
class PointResult:
    """One point. per_replica: GPUs in each replica (pipeline stages or tensor-parallel size);
    stage_layers: the pipeline's layers per stage (empty for tensor); kv_blocks: usable KV blocks
    of a replica. loaded_output_tokens_per_s:
    output tokens per second until the waiting queue first emptied, summed over replicas
    (None where a replica admitted its whole batch at once). prefill_s, decode_s,
    untimed_host_s: the run as the one-GPU engine's timer sees it (`loop` docstring), summed
    over replicas; decode_steps and decode_tokens: decode batches and the sequences in them."""

    model: str
    device: str
    link: str
    strategy: str
    gpus: int
    replicas: int
    per_replica: int
    stage_layers: tuple[int, ...]
    num_slots: int
    max_num_seqs: int
    kv_blocks: int
    requests: int
    prompt_tokens: int
    output_tokens: int
    makespan_s: float
    bubble_fraction: float
    switches: int
    preemptions: int
    batches: int
    prefill_batches: int
    loaded_output_tokens_per_s: float | None
    prefill_s: float = 0.0
    decode_s: float = 0.0
    untimed_host_s: float = 0.0
    decode_steps: int = 0
    decode_tokens: int = 0
    wall_s: float = 0.0                       # CPU seconds the simulation took

    @property
    def mean_decode_batch(self) -> float:
        return self.decode_tokens / self.decode_steps if self.decode_steps else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.makespan_s

    @property
    def total_tokens_per_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.makespan_s

    def to_dict(self) -> dict:
        return dict(asdict(self), output_tokens_per_s=self.output_tokens_per_s,
                    total_tokens_per_s=self.total_tokens_per_s,
                    mean_decode_batch=self.mean_decode_batch)


def _representative(cost: CostModel, workload: Workload, seqs: int, slots: int,
                    replicas: int):
    """(layer_us, head_us) of a typical decode micro-batch: a replica's running set split over
    the slots, each request halfway through its output. The stages are balanced for it."""
    tokens = max(1, math.ceil(min(seqs, workload.num_requests / replicas) / slots))
    context = (workload.prompt_tokens + workload.output_tokens / 2) / workload.num_requests
    return cost.sequential_layer_us(tokens, tokens * context), cost.head_us(tokens)


def _replica(shape: ModelShape, profile: DeviceProfile, link: Link, strategy: str,
             size_and_count: tuple[int, int], workload: Workload, options: SimOptions,
             positions: int | None):
    """(executor, SchedulingConfig, KV blocks with the null block, stage layers, max_model_len)
    of each of `count` replicas of `size` GPUs."""
    size, count = size_and_count
    cost = MemoCostModel(shape, profile)
    seqs = options.seqs_per_gpu * size
    engine = EngineCosts(seqs, host_factor=options.host_factor, padding=options.padding,
                         sampling=options.sampling,
                         prefill_launch_us_per_layer=PREFILL_LAUNCH_US_PER_LAYER
                         if options.prefill_launch else 0.0,
                         prefill_graphs=options.prefill_graphs)
    if strategy == "tensor":
        lay = layouts.tensor_layout(shape, profile, size, block_size=options.block_size)
        executor, slots, stage_layers = TensorParallel(lay, cost, link, engine), 1, ()
    else:
        slots = options.micro_batches or size
        layer_us, head_us = _representative(cost, workload, seqs, slots, count)
        lay = layouts.pipeline_layout(shape, profile, size, layer_us=layer_us, head_us=head_us,
                                      block_size=options.block_size)
        executor, stage_layers = StagePipeline(lay, cost, link, engine), lay.layers
    config = SchedulingConfig(
        "temporal" if strategy == "tdpipe" else "prefill-first", num_slots=slots,
        max_num_seqs=seqs, max_num_batched_tokens=options.max_num_batched_tokens,
        num_stages=len(stage_layers) or 1,
        switch_cost_us=profile.launch_overhead_us * max(stage_layers or (shape.num_layers,)),
        predictor=options.predictor, step_overhead_us=options.step_overhead_us)
    blocks = lay.num_blocks if options.kv_blocks is None else options.kv_blocks + 1
    max_len = (blocks - 1) * lay.block_size
    return executor, config, blocks, stage_layers, min(max_len, positions or max_len)


def replica_size(shape: ModelShape, strategy: str, gpus: int) -> tuple[int, int]:
    """(replicas, GPUs per replica) for `gpus` GPUs."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if strategy != "tensor":
        return layouts.replicas_for(gpus, shape.num_layers)
    return layouts.replicas_for(gpus, shape.num_heads)    # tensor_layout checks the split


def simulate_point(model, profile: DeviceProfile, link: Link, gpus: int, strategy: str,
                   workload: Workload, options: SimOptions = SimOptions()) -> PointResult:
    """Simulate `workload` on `gpus` GPUs; InsufficientMemoryError where weights do not fit."""
    started = time.perf_counter()
    shape = resolve_model(model)
    positions = max_positions(model)
    replicas, size = replica_size(shape, strategy, gpus)
    executor, config, blocks, stage_layers, max_len = _replica(
        shape, profile, link, strategy, (size, replicas), workload, options, positions)
    results: list[RunResult] = []
    for r in range(replicas):
        clock = VirtualClock()
        sched, seqs = build_scheduler(workload.requests(r, replicas), executor.cost, blocks,
                                      options.block_size, max_len, config, clock)
        results.append(run(sched, seqs, executor, config.num_slots, clock,
                           step_overhead_us=config.step_overhead_us, engine=executor.engine))
    makespan = max(r.makespan_us for r in results)
    compute = sum(r.compute_gpu_us for r in results)
    return PointResult(
        model=shape.name, device=profile.name, link=link.name, strategy=strategy, gpus=gpus,
        replicas=replicas, per_replica=size, stage_layers=tuple(stage_layers),
        num_slots=config.num_slots, max_num_seqs=config.max_num_seqs, kv_blocks=blocks - 1,
        requests=sum(r.requests for r in results),
        prompt_tokens=sum(r.prompt_tokens for r in results),
        output_tokens=sum(r.output_tokens for r in results), makespan_s=makespan / 1e6,
        bubble_fraction=1.0 - compute / (gpus * makespan),
        switches=sum(r.switches for r in results),
        preemptions=sum(r.preemptions for r in results),
        batches=sum(r.batches for r in results),
        prefill_batches=sum(r.prefill_batches for r in results),
        loaded_output_tokens_per_s=None if any(r.loaded_us == 0 for r in results) else
        sum(r.loaded_output_tokens / r.loaded_us * 1e6 for r in results),
        prefill_s=sum(r.timed_prefill_us for r in results) / 1e6,
        decode_s=sum(r.timed_decode_us for r in results) / 1e6,
        untimed_host_s=sum(r.untimed_host_us for r in results) / 1e6,
        decode_steps=sum(r.decode_steps for r in results),
        decode_tokens=sum(r.decode_tokens for r in results),
        wall_s=time.perf_counter() - started)
