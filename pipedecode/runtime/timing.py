"""CUDA-event timing: the one GPU timer of pipedecode (device profiles, the executor's measured
guard, the benchmarks).

Owns the method: warm-up calls first, CUDA events around `iters` calls (a callable or a graph
replay), the median of `repeats` samples, candidates timed in rounds whose order rotates, graphs
of several partitions replayed side by side, capture of calls as a CUDA graph, and the input
rotation that keeps a timed kernel's inputs out of L2. Knows nothing of what it times. Needs a
CUDA device when called; importing it needs only torch.
"""

from __future__ import annotations

import math
import statistics
from typing import Callable, Sequence

import torch

MIN_CALLS = 8          # kernels per timed graph, so the replay's fixed cost is amortised


def sample_us(fn: Callable[[], object], *, iters: int = 1, repeats: int = 5,
              warmup: int = 1) -> list[float]:
    """Microseconds per call of fn, one sample per repeat of `iters` calls between two CUDA
    events on the current stream, after `warmup` untimed calls."""
    if min(iters, repeats) <= 0 or warmup < 0:
        raise ValueError(f"iters and repeats must be positive and warmup >= 0, got iters={iters} "
                         f"repeats={repeats} warmup={warmup}")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000 / iters)
    return samples


def time_us(fn: Callable[[], object], *, iters: int = 1, repeats: int = 5,
            warmup: int = 1) -> float:
    """The median of `sample_us`: microseconds per call of fn."""
    return statistics.median(sample_us(fn, iters=iters, repeats=repeats, warmup=warmup))


def time_rounds(fns: dict[str, Callable[[], object]], *, rounds: int = 6,
                iters: int = 5) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(median microseconds per call of each fn, the per-round samples), timed in rounds that each
    run every fn once, the order rotated by one each round. On an H200, a step timed right after
    another heavy step ran up to 4% slower than the same graph timed first (clocks under the
    power limit), so a fixed order charged that to whichever came second."""
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(time_us(fns[name], iters=iters, repeats=1))
    return {name: statistics.median(v) for name, v in samples.items()}, samples


def capture(calls: Callable[[], object] | Sequence[Callable[[], object]],
            stream: torch.cuda.Stream | None = None) -> torch.cuda.CUDAGraph:
    """The calls captured as one CUDA graph on `stream` (a green context's stream keeps its SM
    partition in every kernel node; None: a new side stream), after one warm-up run of each on
    the same stream (Triton compiles and allocations happen outside the capture)."""
    calls = [calls] if callable(calls) else list(calls)
    stream = stream or torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:
            call()
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):         # capture_begin directly: no gc.collect per capture
        graph.capture_begin()
        try:
            for call in calls:
                call()
        finally:
            graph.capture_end()
    return graph


def replay_together(runs: Sequence[tuple[torch.cuda.CUDAGraph, torch.cuda.Stream]]) -> None:
    """Replay each graph on its stream, all forked from the current stream and joined back to it
    (fork all first, then join: no false dependency between them)."""
    main = torch.cuda.current_stream()
    for graph, stream in runs:
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            graph.replay()
    for _, stream in runs:
        main.wait_stream(stream)


def rotations(bytes_per_call: int, l2_bytes: int, most: int = 8) -> int:
    """Input copies to cycle through so that consecutive calls do not find theirs in L2."""
    if bytes_per_call <= 0:
        raise ValueError(f"bytes_per_call must be positive, got {bytes_per_call}")
    return max(1, min(most, math.ceil(3 * l2_bytes / bytes_per_call)))


def repeated(calls: list, at_least: int) -> list:
    """`calls` cycled to at least `at_least` entries: a timed graph of one large kernel also
    times the replay's fixed cost (about 10 us on an H100: graph launch and the cross-stream
    events), which made GEMM and attention latencies 10-30% high where only one or two input
    copies fit the rotation."""
    if not calls:
        raise ValueError("no calls to repeat")
    return [calls[i % len(calls)] for i in range(max(at_least, len(calls)))]


def l2_bytes(device_index: int = 0) -> int:
    """The L2 cache size of a CUDA device (50 MiB where torch does not report it)."""
    props = torch.cuda.get_device_properties(device_index)
    return int(getattr(props, "L2_cache_size", 50 * 2 ** 20))
