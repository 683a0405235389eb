"""The discrete-event loop: the engine's own Scheduler and policy driven on a virtual clock.

Owns `SchedulingConfig`, `build_scheduler` (the real `Scheduler`, `BlockManager`, policy and
length predictor, clocked by the simulation) and `run` (micro-batches issued into free slots,
queued on the executor's servers, their tokens returned when they leave the last one) and the
`RunResult` it measures. No scheduling decision is made here: every batch comes from
`Scheduler.schedule()`, every token goes back through `Scheduler.postprocess()`. Knows nothing
of what a micro-batch costs (`pipedecode.sim.executors` prices it).

Queueing. A micro-batch visits the servers in order, each serving in arrival order (FIFO
tandem queues keep the issue order, so the recurrence is exact): on server j it starts at
max(its arrival, the server free) and arrives at j + 1 when done. Over all servers at once,
with P_j the service time before server j: start_j - P_j = max(issue, max_{i <= j} (free_i -
P_i)), a cumulative maximum. The controller calls `schedule()` whenever a slot is free (at the
start and each time a micro-batch returns), `step_overhead_us` of controller time each call
(0 by default), and spends the engine's host time (`EngineCosts.host_us`, per sequence of the
batch) scheduling and staging a batch before issuing it and sampling and post-processing it
after it returns. On one GPU the engine's loop is synchronous, so that time adds to every
step; with more micro-batches in flight it overlaps the other GPUs' work.

Phases, as the engine's StatsRecorder times them (meaningful at N = 1): a batch's timed time
is its GPU compute (padding and sampling included) plus its staging and sampling host time;
scheduling and post-processing fall outside the timed steps (`untimed_host_us`).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import numpy as np

from pipedecode.engine.block_manager import BlockManager
from pipedecode.engine.params import SamplingParams
from pipedecode.engine.policies import DEFAULT_KV_THRESHOLD, make_policy
from pipedecode.engine.predictor import OnlineLengthEstimator
from pipedecode.engine.scheduler import Scheduler, SchedulerConfig
from pipedecode.engine.sequence import Sequence
from pipedecode.planner.cost import CostModel
from pipedecode.sim.engine_costs import BEFORE_GPU, HOST_PARTS, TIMED, EngineCosts
from pipedecode.sim.workloads import Workload

SIM_TOKEN_ID = 7             # every sampled token; never a stop token
PREDICTORS = ("online", "oracle")


@dataclass(frozen=True)
class SchedulingConfig:
    """How the simulated controller schedules. policy: "temporal" or "prefill-first";
    num_slots: micro-batches in flight; num_stages: what the temporal policy prices its
    switch bubble for; switch_cost_us: its fixed cost per switch; predictor: "online" (the
    engine's OnlineLengthEstimator, learning as requests finish; requests do not ignore EOS,
    max_tokens stops them) or "oracle" (ignore_eos: the engine predicts max_tokens exactly)."""

    policy: str
    num_slots: int = 1
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    num_stages: int = 1
    kv_threshold: float = DEFAULT_KV_THRESHOLD
    switch_cost_us: float = 0.0
    predictor: str = "online"
    step_overhead_us: float = 0.0

    def __post_init__(self) -> None:
        if self.predictor not in PREDICTORS:
            raise ValueError(f"SchedulingConfig.predictor must be one of {PREDICTORS}, "
                             f"got {self.predictor!r}")
        if not self.step_overhead_us >= 0:
            raise ValueError(f"SchedulingConfig.step_overhead_us must be >= 0, "
                             f"got {self.step_overhead_us}")


@dataclass(frozen=True)
class RunResult:
    """What one simulated replica did. compute_gpu_us: GPU-time spent computing, over its
    num_gpus GPUs; the rest of num_gpus x makespan is bubble (idle, or waiting on transfers).
    loaded_us: when the waiting queue first emptied (every request admitted once), and
    loaded_output_tokens the tokens returned by then: the throughput under load, before the
    batch's tail (0 and 0 when no request had finished by then: the whole batch was admitted
    at once, so nothing was ever loaded)."""

    makespan_us: float
    requests: int
    prompt_tokens: int
    output_tokens: int
    prefill_tokens: int
    batches: int
    prefill_batches: int
    switches: int
    preemptions: int
    compute_gpu_us: float
    num_gpus: int
    loaded_us: float = 0.0
    loaded_output_tokens: int = 0
    timed_prefill_us: float = 0.0
    timed_decode_us: float = 0.0
    untimed_host_us: float = 0.0
    decode_tokens: int = 0

    @property
    def bubble_fraction(self) -> float:
        return 1.0 - self.compute_gpu_us / (self.num_gpus * self.makespan_us)

    @property
    def decode_steps(self) -> int:
        return self.batches - self.prefill_batches


class RememberingEstimator(OnlineLengthEstimator):
    """The engine's online estimator, each bucket's prediction remembered until the next
    request finishes (the policy predicts every fitting prompt at every decode step; the
    answers change only when the estimator observes)."""

    def __init__(self) -> None:
        super().__init__()
        self._by_bucket: dict[int, float] = {}

    def predict(self, prompt_token_ids) -> float:
        b = self.bucket(len(prompt_token_ids))
        value = self._by_bucket.get(b)
        if value is None:
            value = self._by_bucket[b] = super().predict(prompt_token_ids)
        return value

    def observe(self, prompt_len: int, output_len: int) -> None:
        super().observe(prompt_len, output_len)
        self._by_bucket.clear()


class VirtualClock:
    def __init__(self) -> None:
        self.now_us = 0.0

    def seconds(self) -> float:
        return self.now_us / 1e6


def build_scheduler(workload: Workload, cost: CostModel, num_blocks: int, block_size: int,
                    max_model_len: int, config: SchedulingConfig,
                    clock: VirtualClock) -> tuple[Scheduler, list[Sequence]]:
    """The engine's scheduler over `num_blocks` KV blocks, holding the workload's requests."""
    if config.policy == "temporal":
        policy = make_policy("temporal", cost, kv_threshold=config.kv_threshold,
                             switch_cost_us=config.switch_cost_us, num_stages=config.num_stages)
    else:
        policy = make_policy(config.policy)
    sched = Scheduler(SchedulerConfig(max_model_len, config.max_num_seqs,
                                      config.max_num_batched_tokens, config.num_slots),
                      BlockManager(num_blocks, block_size), policy, RememberingEstimator(),
                      clock=clock.seconds)
    oracle = config.predictor == "oracle"
    seqs = []
    for i, (p, o) in enumerate(zip(workload.prompt_lens, workload.output_lens)):
        seq = Sequence(i, [SIM_TOKEN_ID] * p, SamplingParams(max_tokens=o, ignore_eos=oracle))
        sched.add(seq)
        seqs.append(seq)
    return sched, seqs


def queue_through(free_us: np.ndarray, servers_us: np.ndarray, issue_us: float) -> np.ndarray:
    """When each server finishes a micro-batch issued at `issue_us` that takes `servers_us` on
    them in turn, the servers being free from `free_us` (FIFO; module docstring)."""
    before = np.concatenate(([0.0], np.cumsum(servers_us[:-1])))
    start = np.maximum(np.maximum.accumulate(free_us - before), issue_us) + before
    return start + servers_us


class _Phases:
    """The engine's host time around each batch, and the run as the engine's timer sees it."""

    def __init__(self, engine: EngineCosts) -> None:
        self.engine = engine
        self.untimed = tuple(p for p in HOST_PARTS if p not in TIMED)
        self.after_gpu = tuple(p for p in HOST_PARTS if p not in BEFORE_GPU)
        self.prefill_us = self.decode_us = self.untimed_us = 0.0
        self.decode_tokens = 0

    def before_gpu_us(self, batch) -> float:
        return self.engine.host_us(BEFORE_GPU, len(batch.seqs))

    def after_gpu_us(self, batch) -> float:
        return self.engine.host_us(self.after_gpu, len(batch.seqs))

    def add(self, batch, compute_us: float) -> None:
        n = len(batch.seqs)
        timed = compute_us + self.engine.host_us(TIMED, n)
        if batch.kind == "prefill":
            self.prefill_us += timed
        else:
            self.decode_us += timed
            self.decode_tokens += n
        self.untimed_us += self.engine.host_us(self.untimed, n)


def run(sched: Scheduler, seqs: list[Sequence], executor, num_slots: int, clock: VirtualClock,
        *, step_overhead_us: float = 0.0, engine: EngineCosts | None = None) -> RunResult:
    """Drive `sched` holding `seqs` to the end on `executor` (`service(batch)`, `num_servers`,
    `num_gpus`), the controller spending `engine`'s host time (None: none). A switch: a
    prefill issued right after a decode while requests run."""
    free = np.zeros(executor.num_servers)
    in_flight: list = []                       # heap of (done_us, order, batch)
    order = itertools.count()
    phases = _Phases(engine or EngineCosts.off())
    controller_us = compute_us = 0.0
    batches = prefills = switches = 0
    last_kind, returned, finished, loaded = None, 0, 0, None
    while sched.has_unfinished():
        while len(in_flight) < num_slots:
            controller_us = max(controller_us, clock.now_us) + step_overhead_us
            running = bool(sched.running)
            batch = sched.schedule()
            if batch is None:
                break
            controller_us += phases.before_gpu_us(batch)
            service = executor.service(batch)
            free = queue_through(free, service.servers_us, controller_us)
            compute_us += service.compute_us
            phases.add(batch, service.compute_us)
            heapq.heappush(in_flight, (float(free[-1]), next(order), batch))
            batches += 1
            if batch.kind == "prefill":
                prefills += 1
                switches += last_kind == "decode" and running
            last_kind = batch.kind
            if loaded is None and not sched.waiting:
                loaded = (clock.now_us, returned) if finished else (0.0, 0)
        if not in_flight:
            raise RuntimeError(f"the scheduler formed no batch with {len(sched.waiting)} waiting "
                               f"and {len(sched.running)} running requests")
        done_us, _, batch = heapq.heappop(in_flight)
        clock.now_us = done_us
        controller_us = max(controller_us, done_us) + phases.after_gpu_us(batch)
        finished += len(sched.postprocess(batch, [SIM_TOKEN_ID] * len(batch.seqs)))
        returned += len(batch.seqs)
    return RunResult(max(clock.now_us, controller_us), len(seqs),
                     sum(s.num_prompt_tokens for s in seqs),
                     sum(s.num_output_tokens for s in seqs), sched.prefill_tokens, batches,
                     prefills, switches, sched.num_preemptions, compute_us, executor.num_gpus,
                     *(loaded or (0.0, 0)), phases.prefill_us, phases.decode_us,
                     phases.untimed_us, phases.decode_tokens)
