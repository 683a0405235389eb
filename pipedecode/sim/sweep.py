"""Many simulated points: every (model, link, strategy, GPU count) of a sweep, and its JSON.

Owns `SweepSpec`, `run_sweep` (the points in order behind a tqdm bar, infeasible ones skipped
with their reason) and `SweepResult` with its versioned JSON, which records every assumption
the numbers rest on. Knows nothing of command lines; `pipedecode.sim.report` writes the
markdown table and the plot.

One GPU has no link: the 1-GPU point of each strategy is simulated once and listed under
every link (the executor never prices a transfer there).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace

from pipedecode.errors import InsufficientMemoryError
from pipedecode.planner.problem import DEFAULT_MEMORY_UTILIZATION, resolve_model
from pipedecode.profiles import load_profile
from pipedecode.sim.engine_costs import PREFILL_LAUNCH_US_PER_LAYER
from pipedecode.sim.links import get_link
from pipedecode.sim.strategies import STRATEGIES, PointResult, SimOptions, simulate_point
from pipedecode.sim.workloads import make_workload

SWEEP_VERSION = 1
DEFAULT_GPUS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class SweepSpec:
    models: tuple[str, ...]
    device: str = "h200"
    links: tuple[str, ...] = ("pcie5", "nvlink4")
    strategies: tuple[str, ...] = STRATEGIES
    gpus: tuple[int, ...] = DEFAULT_GPUS
    workload: str = "sharegpt"
    requests: int = 1000
    seed: int = 0
    options: SimOptions = field(default_factory=SimOptions)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("a sweep needs at least one model")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise ValueError(f"unknown strategies {bad}; use some of {', '.join(STRATEGIES)}")
        if not self.gpus or min(self.gpus) < 1:
            raise ValueError(f"GPU counts must be positive, got {list(self.gpus)}")
        if not self.links:
            raise ValueError("a sweep needs at least one link")
        for name in self.links:
            get_link(name)

    def points(self) -> list[tuple[str, int, str, str | None]]:
        """(model, gpus, strategy, link) in sweep order; link None: one GPU, no link."""
        out = []
        for model in self.models:
            for gpus in sorted(set(self.gpus)):
                for strategy in self.strategies:
                    for link in ((None,) if gpus == 1 else self.links):
                        out.append((model, gpus, strategy, link))
        return out


@dataclass(frozen=True)
class SweepResult:
    spec: SweepSpec
    points: tuple[PointResult, ...]
    skipped: tuple[dict, ...]
    workload: dict
    assumptions: dict
    elapsed_s: float

    def to_json(self) -> str:
        spec = asdict(self.spec)
        return json.dumps(dict(version=SWEEP_VERSION, kind="pipedecode-simulation",
                               simulated=True, spec=spec, workload=self.workload,
                               assumptions=self.assumptions, elapsed_s=self.elapsed_s,
                               points=[p.to_dict() for p in self.points],
                               skipped=list(self.skipped)), indent=1) + "\n"


def assumptions(spec: SweepSpec) -> dict:
    """Every number the results rest on that was not measured here, in words."""
    profile = load_profile(spec.device)
    o = spec.options
    return dict(
        device=f"{profile.name}: {profile.description} ({profile.source} profile)",
        links={name: get_link(name).describe() for name in spec.links},
        memory=f"{DEFAULT_MEMORY_UTILIZATION:.0%} of each GPU's {profile.memory_bytes / 2**30:.0f} "
               f"GiB for its weights and KV blocks of {o.block_size} tokens; activations not "
               f"modelled",
        seats=f"max_num_seqs {o.seqs_per_gpu} per GPU of a replica; prefill batches of at most "
              f"{o.max_num_batched_tokens} tokens",
        micro_batches="one per pipeline stage in flight" if o.micro_batches is None
        else f"{o.micro_batches} in flight",
        predictor="the engine's OnlineLengthEstimator, learning as requests finish (requests do "
                  "not ignore EOS; their max_tokens stops them)" if o.predictor == "online"
        else "an oracle (ignore_eos: the engine knows every max_tokens)",
        controller=f"{o.step_overhead_us:g} us of controller time per scheduling call, and the "
                   f"engine's host time per sequence of each batch (schedule, stage, sample, "
                   f"postprocess: the CPU benchmark's rates x {o.host_factor:g}, the GPU "
                   f"machine's host speed fitted on a measured run)",
        engine=f"decode steps padded to the runner's batch buckets: "
               f"{'yes' if o.padding else 'no'}; the greedy sampling on the GPU: "
               f"{'yes' if o.sampling else 'no'}; an eager prefill lasting at least its "
               f"kernels' launch time on the host ({PREFILL_LAUNCH_US_PER_LAYER:g} us per layer "
               f"of a stage, measured on the H200 machine): "
               f"{'yes' if o.prefill_launch else 'no'}; small prefills (up to 1024 tokens, 64 "
               f"prompts) from CUDA graphs where the engine has them (one GPU; a pipeline "
               f"stage prefills eagerly; the tensor-parallel estimate is given them): "
               f"{'yes' if o.prefill_graphs else 'no'} (pipedecode.sim.engine_costs)",
        costs="every GPU time from the CostModel on the device profile; transfers overlap "
              "compute; tensor parallel is an analytic estimate (step / N + two ring "
              "all-reduces per layer), optimistic for it",
        replicas="more GPUs than a replica can use (a layer per stage, heads per GPU) run as "
                 "data-parallel replicas, each with every R-th request")


def _point(task) -> tuple[PointResult | None, dict | None]:
    """One point of a sweep (a process pool's unit of work)."""
    spec, workload, (model, gpus, strategy, link) = task
    try:
        return simulate_point(model, load_profile(spec.device), get_link(link or spec.links[0]),
                              gpus, strategy, workload, spec.options), None
    except InsufficientMemoryError as exc:
        return None, dict(model=model, gpus=gpus, strategy=strategy, link=link, reason=str(exc))


def run_sweep(spec: SweepSpec, *, progress: bool = True, jobs: int = 1) -> SweepResult:
    """Every feasible point of `spec`, on `jobs` processes; a point whose weights do not fit
    is skipped with the reason (InsufficientMemoryError's message)."""
    if jobs < 1:
        raise ValueError(f"jobs must be positive, got {jobs}")
    load_profile(spec.device)
    workload = make_workload(spec.workload, spec.requests, spec.seed)
    for model in spec.models:
        resolve_model(model)                      # a bad name fails before any point runs
    todo = spec.points()
    tasks = [(spec, workload, point) for point in todo]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="simulated points", unit="point", dynamic_ncols=True)
    start = time.perf_counter()
    answers: list = [None] * len(todo)

    def done(i: int, answer) -> None:
        answers[i] = answer
        if bar is not None:
            bar.update(1)

    try:
        if jobs == 1:
            for i, task in enumerate(tasks):
                done(i, _point(task))
        else:
            import concurrent.futures as cf
            import multiprocessing

            with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) \
                    as pool:
                futures = {pool.submit(_point, task): i for i, task in enumerate(tasks)}
                for future in cf.as_completed(futures):
                    done(futures[future], future.result())
    finally:
        if bar is not None:
            bar.close()
    points, skipped = [], []
    for (model, gpus, strategy, link), (result, skip) in zip(todo, answers):
        if skip is not None:
            skipped.append(skip)
            continue
        for name in ((link,) if link else spec.links):
            points.append(replace(result, link=name))
    return SweepResult(spec, tuple(points), tuple(skipped), workload.summary(),
                       assumptions(spec), time.perf_counter() - start)
