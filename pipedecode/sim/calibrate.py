"""The simulator at N = 1 against a measured engine run: the same workload, the error.

Owns `Measured` (what a measured run must say: its workload spec, the engine's policy and
throughputs; optionally model, device, request count, seed, limits and KV pool size) read
from the simple dict the engine's offline benchmark writes or a person types, and
`compare(measured) -> Comparison` (the simulator on one GPU of the same device, with the same
workload and limits; errors in percent; within 10% or not). Knows nothing of files: the
comparison script (benchmarks/sim_vs_measured.py) reads and writes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from pipedecode.engine.policies import POLICIES
from pipedecode.profiles import load_profile
from pipedecode.sim.links import LINKS
from pipedecode.sim.strategies import PointResult, SimOptions, simulate_point
from pipedecode.sim.workloads import make_workload

TOLERANCE = 0.10                 # the simulator is trusted where it is this close at N = 1
STRATEGY_OF_POLICY = {"temporal": "tdpipe", "prefill-first": "pipeline"}


@dataclass(frozen=True)
class Measured:
    """One measured engine run. workload: a `make_workload` spec; requests and seed pick the
    same requests (seed 0 and 1000 requests when not given). ignore_eos: whether the run
    forced every request to its max_tokens (then the engine's predictions were exact; else the
    online estimator predicted). kv_blocks: the usable KV blocks the engine had (GenerateStats);
    None: sized from the device's memory as the simulator sizes it."""

    workload: str
    policy: str
    output_tokens_per_s: float
    total_tokens_per_s: float
    model: str = "llama-3-8b"
    device: str = "h200"
    requests: int = 1000
    seed: int = 0
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    ignore_eos: bool = True
    kv_blocks: int | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"measured policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        for name in ("output_tokens_per_s", "total_tokens_per_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"measured {name} must be a positive number, got {value!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "Measured":
        """From a dict holding at least workload, policy, output_tokens_per_s and
        total_tokens_per_s; other keys of the benchmark's JSON are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"a measured run must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        missing = [n for n in ("workload", "policy", "output_tokens_per_s",
                               "total_tokens_per_s") if n not in data]
        if missing:
            raise ValueError(f"the measured run lacks {', '.join(missing)}; it needs workload, "
                             f"policy, output_tokens_per_s and total_tokens_per_s")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ValueError(f"bad measured run: {exc}") from None


@dataclass(frozen=True)
class Comparison:
    measured: Measured
    simulated: PointResult

    @property
    def output_error(self) -> float:
        """simulated / measured - 1 for output tokens/s (+0.05: the simulator is 5% high)."""
        return self.simulated.output_tokens_per_s / self.measured.output_tokens_per_s - 1

    @property
    def total_error(self) -> float:
        return self.simulated.total_tokens_per_s / self.measured.total_tokens_per_s - 1

    @property
    def within_tolerance(self) -> bool:
        return abs(self.output_error) <= TOLERANCE and abs(self.total_error) <= TOLERANCE


def compare(measured: Measured, options: SimOptions | None = None) -> Comparison:
    """Simulate the measured run's workload on one GPU of its device with its policy."""
    workload = make_workload(measured.workload, measured.requests, measured.seed)
    if workload.num_requests != measured.requests:
        raise ValueError(f"workload {measured.workload!r} made {workload.num_requests} "
                         f"requests, the run measured {measured.requests}")
    base = options or SimOptions()
    options = SimOptions(seqs_per_gpu=measured.max_num_seqs,
                         max_num_batched_tokens=measured.max_num_batched_tokens,
                         block_size=base.block_size,
                         predictor="oracle" if measured.ignore_eos else "online",
                         step_overhead_us=base.step_overhead_us,
                         kv_blocks=measured.kv_blocks)
    result = simulate_point(measured.model, load_profile(measured.device), LINKS["pcie5"], 1,
                            STRATEGY_OF_POLICY[measured.policy], workload, options)
    return Comparison(measured, result)


def markdown(comparisons: list[Comparison]) -> str:
    """A table: measured vs simulated tokens/s per run, the errors, within 10% or not."""
    lines = ["| model | device | workload | policy | measured output tok/s | simulated | error | "
             "measured total tok/s | simulated | error | within 10% |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        m, s = c.measured, c.simulated
        lines.append(f"| {m.model} | {m.device} | `{m.workload}` x {m.requests} | {m.policy} | "
                     f"{m.output_tokens_per_s:,.0f} | {s.output_tokens_per_s:,.0f} | "
                     f"{100 * c.output_error:+.1f}% | {m.total_tokens_per_s:,.0f} | "
                     f"{s.total_tokens_per_s:,.0f} | {100 * c.total_error:+.1f}% | "
                     f"{'yes' if c.within_tolerance else 'no'} |")
    return "\n".join(lines) + "\n"
