"""What the engine spends on a step besides the cost model's GPU price: padding, sampling,
prefill launches, host.

Owns `EngineCosts` and its four terms, each read off the engine's own code or taken from an
independent measurement (never from the runs the simulator is compared with, but for the one
host speed factor, fitted on one workload and said so):

  decode padding  a decode step of n sequences replays the CUDA graph of the smallest bucket
                  holding n rows (`runtime.runner_plans.bucket_sizes` of max_num_seqs, the
                  runner's own buckets); a padded row feeds one token at context length 1
                  (`runtime.runner_inputs`). The step is priced at the bucket's rows holding
                  the batch's KV tokens plus one per padded row.
  sampling        the greedy sampler (`engine.sampler`) turns the logits [rows, vocab] into
                  float32 and takes their argmax on the GPU: two kernels moving rows x vocab x
                  (2 read + 4 written + 4 read) bytes (bf16 logits), priced by the cost model's
                  floor (bytes / HBM bandwidth) plus a launch each.
  prefill launch  an eager prefill: the host launches about 22 kernels per layer, which on
                  the H200 machine takes 19-31 ms for Llama-3-8B's 32 layers whatever the
                  batch (`benchmarks/results/prefill_overhead_h200.md`: the enqueue time of
                  prefills of 16 to 8192 tokens), so it lasts at least that long: priced at
                  max(the cost model's GPU time, PREFILL_LAUNCH_US_PER_LAYER per layer).
                  The one-GPU runner replays a prefill that a bucket of
                  `runtime.prefill_graphs` holds (up to 1024 tokens, 64 prompts) from a CUDA
                  graph instead: priced at the cost model's GPU time with its GEMMs over the
                  bucket's padded tokens. A pipeline stage prefills eagerly.
  host            the engine's loop is synchronous (the sampled tokens are read back every
                  step), so its host work adds to each step, per sequence of the batch: the
                  scheduler forming it and the runner staging its inputs before the GPU starts,
                  the sampler's Python and the postprocess after it ends. The rates per
                  sequence are `engine_host_overhead_cpu.json` (benchmarks/engine_host_overhead.py
                  on a shared 2-core CPU, no GPU; medians at 256 and 1024 running sequences of
                  both policies, fitted through the origin: `per_sequence_rates`), times the
                  speed of the GPU machine's host relative to that CPU (`host_factor`).

HOST_FACTOR is fitted on workload (c) of benchmarks/results/offline_throughput_h200.json: the
time its two cells spent outside the engine's timed steps (elapsed - prefill_s - decode_s, which
is only the scheduler and postprocess) over what these rates give for the same steps (simulated,
factor 1). `benchmarks/sim_vs_measured.py --fit-host-on c` refits it and tests check the two
agree; workloads (a) and (b) validate it. Knows nothing of scheduling or of the clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipedecode import counts
from pipedecode.planner.cost import CostModel
from pipedecode.runtime.prefill_graphs import bucket_for as bucket_for_prefill
from pipedecode.runtime.runner_plans import bucket_for, bucket_sizes

HOST_PARTS = ("schedule", "stage", "sample", "postprocess")
BEFORE_GPU = ("schedule", "stage")          # the engine's order: schedule -> runner -> sample
TIMED = ("stage", "sample")                 # inside the engine's timed step (StatsRecorder)

# engine_host_overhead_cpu.json fitted through the origin (`per_sequence_rates`), us per
# sequence of the batch: schedule 52/213, stage 81/348, sample 30/109, postprocess 69/352 us
# at 256/1024 sequences (prefill-first; temporal within 4%)
BENCH_HOST_US_PER_SEQ = {"schedule": 0.2070, "stage": 0.3314, "sample": 0.1058,
                         "postprocess": 0.3389}
# (c)'s two cells spent 0.433 and 0.394 s outside the timed steps; these rates give 0.140 s
# for each (its 1023 decode steps of 250 sequences and 32 prefills)
HOST_FACTOR = 2.960        # the H200 machine's host over that CPU, fitted on workload (c)
# prefill_overhead_h200.json: the median enqueue time of one eager prefill, 19.5-31.4 ms over
# 10 shapes (16 to 8192 tokens, 672-768 kernels), over 32 layers
PREFILL_LAUNCH_US_PER_LAYER = 723.0
LOGITS_BYTES_PER_ELEMENT = 2 + 4 + 4        # bf16 read, float32 written, float32 read (argmax)


def per_sequence_rates(rows: list[dict]) -> dict[str, float]:
    """Least-squares us per sequence through the origin of each host part, from the rows of
    an engine_host_overhead result ({"seqs": n, "schedule_us": ..., ...})."""
    if not rows:
        raise ValueError("no host-overhead rows to fit")
    squares = sum(r["seqs"] ** 2 for r in rows)
    return {part: sum(r["seqs"] * r[f"{part}_us"] for r in rows) / squares
            for part in HOST_PARTS}


@dataclass(frozen=True)
class EngineCosts:
    """The engine's costs around the GPU step for a runner of `max_num_seqs` seats.
    host_us_per_seq: the benchmark CPU's rates per part; host_factor: the simulated host's
    time over that CPU's (0: no host time). padding / sampling: whether to add those terms."""

    max_num_seqs: int = 256
    host_us_per_seq: tuple[tuple[str, float], ...] = tuple(BENCH_HOST_US_PER_SEQ.items())
    host_factor: float = HOST_FACTOR
    padding: bool = True
    sampling: bool = True
    prefill_launch_us_per_layer: float = PREFILL_LAUNCH_US_PER_LAYER
    prefill_graphs: bool = True

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"EngineCosts.max_num_seqs must be positive, got {self.max_num_seqs}")
        if not (math.isfinite(self.host_factor) and self.host_factor >= 0):
            raise ValueError(f"EngineCosts.host_factor must be a number >= 0, "
                             f"got {self.host_factor}")
        launch = self.prefill_launch_us_per_layer
        if not (math.isfinite(launch) and launch >= 0):
            raise ValueError(f"EngineCosts.prefill_launch_us_per_layer must be a number >= 0, "
                             f"got {launch}")
        rates = dict(self.host_us_per_seq)
        if sorted(rates) != sorted(HOST_PARTS) or min(rates.values()) < 0:
            raise ValueError(f"EngineCosts.host_us_per_seq needs rates >= 0 for exactly "
                             f"{', '.join(HOST_PARTS)}; got {rates}")
        object.__setattr__(self, "_buckets", bucket_sizes(self.max_num_seqs))
        object.__setattr__(self, "_rates", rates)

    @classmethod
    def off(cls, max_num_seqs: int = 256) -> "EngineCosts":
        """The GPU's cost model alone: no padding, no sampling, no host time, no prefill
        launch floor."""
        return cls(max_num_seqs, host_factor=0.0, padding=False, sampling=False,
                   prefill_launch_us_per_layer=0.0, prefill_graphs=False)

    def prefill_us(self, cost: CostModel, prompt_lens: list[int], *,
                   graphs: bool = True) -> float:
        """A prefill of these prompts on the whole model: replayed from its bucket's CUDA
        graph where `graphs` (the runner has them) and a bucket holds it, its GEMMs over the
        bucket's padded tokens; else eager, lasting at least its launches' host time."""
        gpu_us = cost.prefill_us(prompt_lens)
        bucket = bucket_for_prefill(sum(prompt_lens), len(prompt_lens)) \
            if graphs and self.prefill_graphs else None
        if bucket is None:
            return max(gpu_us, cost.model.num_layers * self.prefill_launch_us_per_layer)
        sms = cost.profile.sm_count
        padded = cost.linear_us(bucket.tokens, sms) - cost.linear_us(sum(prompt_lens), sms)
        return gpu_us + cost.model.num_layers * padded

    def decode_rows(self, num_seqs: int) -> int:
        """Rows the decode step of `num_seqs` sequences runs (its bucket, or itself when no
        padding is modelled or the batch exceeds the buckets: a pipeline's controller)."""
        if not self.padding or num_seqs > self._buckets[-1]:
            return num_seqs
        return bucket_for(num_seqs, self._buckets)

    def sampling_us(self, cost: CostModel, rows: int) -> float:
        """The greedy pick over `rows` rows of logits on the GPU."""
        if not self.sampling or rows <= 0:
            return 0.0
        moved = rows * cost.model.vocab_size * LOGITS_BYTES_PER_ELEMENT
        return cost.floor_us(counts.Counts(0, moved)) + 2 * cost.profile.launch_overhead_us

    def host_us(self, parts: tuple[str, ...], num_seqs: int) -> float:
        """Host time of these parts for a batch of `num_seqs` sequences."""
        return self.host_factor * num_seqs * sum(self._rates[p] for p in parts)
