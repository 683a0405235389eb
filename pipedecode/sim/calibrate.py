"""The simulator at N = 1 against a measured engine run: the same workload, the error.

Owns `Measured` (what a measured run must say: its workload spec, the engine's policy and
throughputs; optionally model, device, request count, seed, limits, KV pool size and the
engine timer's phases) read from the simple dict the engine's offline benchmark writes or a
person types, `compare(measured) -> Comparison` (the simulator on one GPU of the same device,
with the same workload and limits; errors in percent, phase by phase where the run has its
phases; within 10% or not) and `fit_host_factor` (the host speed factor that makes the
simulated time outside the engine's timed steps equal the measured one, over given runs).
Knows nothing of files: the comparison script (benchmarks/sim_vs_measured.py) reads and
writes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from pipedecode.engine.policies import POLICIES
from pipedecode.profiles import load_profile
from pipedecode.sim.links import LINKS
from pipedecode.sim.strategies import PointResult, SimOptions, simulate_point
from pipedecode.sim.workloads import make_workload

TOLERANCE = 0.10                 # the simulator is trusted where it is this close at N = 1
STRATEGY_OF_POLICY = {"temporal": "tdpipe", "prefill-first": "pipeline"}
PHASES = ("elapsed_s", "prefill_s", "decode_s", "decode_steps", "mean_decode_batch")


@dataclass(frozen=True)
class Measured:
    """One measured engine run. workload: a `make_workload` spec; requests and seed pick the
    same requests (seed 0 and 1000 requests when not given). ignore_eos: whether the run
    forced every request to its max_tokens (then the engine's predictions were exact; else the
    online estimator predicted). kv_blocks: the usable KV blocks the engine had (GenerateStats);
    None: sized from the device's memory as the simulator sizes it. elapsed_s, prefill_s,
    decode_s, decode_steps, mean_decode_batch: the engine's phases (GenerateStats: prefill_s
    and decode_s time each step's runner call and sampling; the rest of elapsed_s is the
    scheduler and postprocess), None where not measured. prefill_graphs: whether the engine
    replayed its small prefills from CUDA graphs (runs made before it had them did not)."""

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
    elapsed_s: float | None = None
    prefill_s: float | None = None
    decode_s: float | None = None
    decode_steps: int | None = None
    mean_decode_batch: float | None = None
    prefill_graphs: bool = True

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"measured policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        for name in ("output_tokens_per_s", "total_tokens_per_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"measured {name} must be a positive number, got {value!r}")
        for name in PHASES:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and
                                          math.isfinite(value) and value >= 0):
                raise ValueError(f"measured {name} must be a number >= 0 or absent, "
                                 f"got {value!r}")

    @property
    def has_phases(self) -> bool:
        return None not in (self.elapsed_s, self.prefill_s, self.decode_s)

    @property
    def untimed_s(self) -> float | None:
        """Time outside the engine's timed steps: the scheduler and postprocess."""
        if not self.has_phases:
            return None
        return self.elapsed_s - self.prefill_s - self.decode_s

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

    def phases(self) -> list[tuple[str, float, float]]:
        """(phase, measured, simulated) of each phase the run measured: the engine timer's
        prefill_s and decode_s, the untimed host time, decode steps and mean decode batch."""
        m, s = self.measured, self.simulated
        pairs = [("elapsed_s", m.elapsed_s, s.makespan_s), ("prefill_s", m.prefill_s, s.prefill_s),
                 ("decode_s", m.decode_s, s.decode_s), ("untimed_s", m.untimed_s,
                                                        s.untimed_host_s),
                 ("decode_steps", m.decode_steps, s.decode_steps),
                 ("mean_decode_batch", m.mean_decode_batch, s.mean_decode_batch)]
        return [(name, float(a), float(b)) for name, a, b in pairs if a is not None]


def compare(measured: Measured, options: SimOptions | None = None) -> Comparison:
    """Simulate the measured run's workload on one GPU of its device with its policy."""
    workload = make_workload(measured.workload, measured.requests, measured.seed)
    if workload.num_requests != measured.requests:
        raise ValueError(f"workload {measured.workload!r} made {workload.num_requests} "
                         f"requests, the run measured {measured.requests}")
    options = replace(options or SimOptions(), seqs_per_gpu=measured.max_num_seqs,
                      max_num_batched_tokens=measured.max_num_batched_tokens,
                      predictor="oracle" if measured.ignore_eos else "online",
                      kv_blocks=measured.kv_blocks, micro_batches=None,
                      prefill_graphs=measured.prefill_graphs)
    result = simulate_point(measured.model, load_profile(measured.device), LINKS["pcie5"], 1,
                            STRATEGY_OF_POLICY[measured.policy], workload, options)
    return Comparison(measured, result)


def fit_host_factor(runs: list[Measured], options: SimOptions | None = None) -> float:
    """The host factor that makes the simulated untimed host time of `runs` (scheduler and
    postprocess, at factor 1) sum to the measured one. Host time does not change what the
    scheduler does on one GPU, so that time is linear in the factor."""
    usable = [m for m in runs if m.has_phases]
    if not usable:
        raise ValueError("fitting the host factor needs measured runs with elapsed_s, "
                         "prefill_s and decode_s")
    at_one = replace(options or SimOptions(), host_factor=1.0)
    simulated = sum(compare(m, at_one).simulated.untimed_host_s for m in usable)
    if simulated <= 0:
        raise ValueError("the simulated runs spent no host time; nothing to fit")
    return sum(m.untimed_s for m in usable) / simulated


def phase_markdown(comparisons: list[Comparison]) -> str:
    """A table: each run's phases, measured / simulated (error); runs without phases left
    out."""
    names = ("elapsed_s", "prefill_s", "decode_s", "untimed_s", "decode_steps",
             "mean_decode_batch")
    lines = ["| workload | seats | policy | " + " | ".join(n.replace("_", " ") for n in names)
             + " |", "|---|---|---|" + "---|" * len(names)]
    for c in comparisons:
        got = {name: (a, b) for name, a, b in c.phases()}
        if not got:
            continue
        cells = [_pair(*got[n]) if n in got else "-" for n in names]
        m = c.measured
        lines.append(f"| `{m.workload}` x {m.requests} | {m.max_num_seqs} | {m.policy} | "
                     f"{' | '.join(cells)} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def _pair(measured: float, simulated: float) -> str:
    error = f" ({100 * (simulated / measured - 1):+.1f}%)" if measured else ""
    digits = 0 if float(measured).is_integer() and float(simulated).is_integer() else 2
    return f"{measured:,.{digits}f} / {simulated:,.{digits}f}{error}"


def markdown(comparisons: list[Comparison]) -> str:
    """A table: measured vs simulated tokens/s per run, the errors, within 10% or not."""
    lines = ["| model | device | workload | seats | policy | measured output tok/s | simulated | "
             "error | measured total tok/s | simulated | error | within 10% |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        m, s = c.measured, c.simulated
        lines.append(f"| {m.model} | {m.device} | `{m.workload}` x {m.requests} | "
                     f"{m.max_num_seqs} | {m.policy} | "
                     f"{m.output_tokens_per_s:,.0f} | {s.output_tokens_per_s:,.0f} | "
                     f"{100 * c.output_error:+.1f}% | {m.total_tokens_per_s:,.0f} | "
                     f"{s.total_tokens_per_s:,.0f} | {100 * c.total_error:+.1f}% | "
                     f"{'yes' if c.within_tolerance else 'no'} |")
    return "\n".join(lines) + "\n"
