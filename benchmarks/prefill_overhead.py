"""One engine prefill call by batch shape: its wall time against its GPU kernel time and the
cost model's price, eager and from the runner's CUDA graph.

Llama-3-8B (random weights, all layers, bf16) on a PagedModelRunner with a small KV pool. For
each shape (prompts x tokens per prompt) the runner's device half of a prefill
(`run_prefill`: the inputs copied in, every layer, the last tokens' logits) runs `--repeats`
times, and per shape the result holds the medians of
- wall: the call until the GPU is done (what the engine's timed prefill step pays, sampling
  aside);
- enqueue: the call until it returns (the host's launches; the GPU may still be running);
- kernels: the GPU's own time, the kernels of one call summed (torch.profiler), and their count;
- the cost model's `prefill_us` for the same prompts;
- graph wall: the same call replaying its bucket's CUDA graph (runtime/prefill_graphs.py),
  where a bucket holds the shape.
Where wall is well above kernels, the prefill waits on the host's launches, not on the GPU.

Usage: python benchmarks/prefill_overhead.py [--shapes 1x16,1x128,4x128,16x512] [--repeats 10]
       [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import record  # noqa: E402  (benchmarks/record.py)

SHAPES = "1x16,1x128,1x512,1x2048,2x128,4x128,8x128,16x128,4x512,16x512"
GIB = 2 ** 30


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """`1x128,4x512` -> [(1, 128), (4, 512)]: prompts x tokens per prompt."""
    shapes = []
    for part in (p for p in text.split(",") if p.strip()):
        prompts, _, tokens = part.strip().partition("x")
        try:
            shape = (int(prompts), int(tokens))
        except ValueError:
            raise ValueError(f"shape {part!r} is not PROMPTSxTOKENS, e.g. 4x128") from None
        if min(shape) < 1:
            raise ValueError(f"shape {part!r} needs at least 1 prompt of 1 token")
        shapes.append(shape)
    if not shapes:
        raise ValueError("no shapes given")
    return shapes


def prefill_inputs(prompts: int, tokens: int, vocab: int, seed: int = 0):
    """Token ids, prompt bounds and KV slots (the pool's first slots, in order) of `prompts`
    prompts of `tokens` tokens each."""
    rng = np.random.default_rng(seed)
    total = prompts * tokens
    ids = rng.integers(0, vocab, size=total, dtype=np.int64)
    starts = (np.arange(prompts + 1) * tokens).astype(np.int32)
    return ids, starts, np.arange(total, dtype=np.int64)


def kernel_time_us(fn) -> tuple[float, int]:
    """(GPU time summed over the kernels and copies of one call of fn, their count)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.device_time_total for e in kernels), len(kernels)


def _timed(call, repeats: int) -> tuple[float, float]:
    """(median wall, median enqueue) of `call` in us, after one untimed call."""
    call()
    torch.cuda.synchronize()
    walls, enqueues = [], []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        enqueued = time.perf_counter()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - start) * 1e6)
        enqueues.append((enqueued - start) * 1e6)
    return statistics.median(walls), statistics.median(enqueues)


def measure(runner, cost, shape: tuple[int, int], repeats: int) -> dict:
    """One shape, eager (the runner's prefill graphs set aside) and from its CUDA graph."""
    prompts, tokens = shape
    ids, starts, slots = prefill_inputs(prompts, tokens, runner.shape.vocab_size)

    def call():
        return runner.run_prefill(ids, starts, slots)

    graphs, runner.prefill_graphs = runner.prefill_graphs, None
    try:
        wall, enqueue = _timed(call, repeats)
        kernel_us, kernels = kernel_time_us(call)
    finally:
        runner.prefill_graphs = graphs
    graph_wall = None
    if graphs is not None and graphs.run(ids, starts, slots) is not None:
        graph_wall = _timed(call, repeats)[0]
    return {"prompts": prompts, "tokens_per_prompt": tokens, "tokens": prompts * tokens,
            "wall_us": wall, "enqueue_us": enqueue, "kernel_us": kernel_us, "kernels": kernels,
            "cost_model_us": cost.prefill_us([tokens] * prompts),
            "wall_over_kernels": wall / kernel_us if kernel_us else float("nan"),
            "graph_wall_us": graph_wall}


def markdown(result: dict) -> str:
    lines = record.heading("Prefill call overhead", result) + [
        f"{result['model']} (random weights, all {result['layers']} layers, bf16), profile "
        f"{result['profile']}: the runner's device half of one prefill (inputs copied in, every "
        f"layer, the last tokens' logits), medians of {result['repeats']} calls. Wall: until the "
        "GPU is done; enqueue: until the call returns; kernels: the GPU's own time, one call's "
        "kernels summed (torch.profiler). Wall well above kernels means the prefill waits on "
        "the host's launches. Graph wall: the same call replaying its bucket's CUDA graph "
        "(prefills of up to 1024 tokens and 64 prompts).", "",
        "| prompts x tokens | tokens | wall ms | enqueue ms | kernels ms | kernels | "
        "cost model ms | wall / kernels | graph wall ms | eager / graph |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        graph = r.get("graph_wall_us")
        graph_cells = f"{graph / 1e3:.2f} | {r['wall_us'] / graph:.2f}x" if graph else \
            "- (eager: past the graphs' buckets) | -"
        lines.append(f"| {r['prompts']} x {r['tokens_per_prompt']} | {r['tokens']} | "
                     f"{r['wall_us'] / 1e3:.2f} | {r['enqueue_us'] / 1e3:.2f} | "
                     f"{r['kernel_us'] / 1e3:.2f} | {r['kernels']} | "
                     f"{r['cost_model_us'] / 1e3:.2f} | {r['wall_over_kernels']:.2f} | "
                     f"{graph_cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--shapes", default=SHAPES, help="PROMPTSxTOKENS, comma-separated")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--profile", default=None, help="device profile (default: this GPU's)")
    parser.add_argument("--out", default=record.RESULTS)
    args = parser.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as exc:
        parser.error(f"--shapes: {exc}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if not torch.cuda.is_available():
        print("prefill_overhead: needs a CUDA GPU", file=sys.stderr)
        return 2
    from pipedecode.engine.runner import RunnerConfig
    from pipedecode.models import build_model, model_shape
    from pipedecode.planner.cost import CostModel
    from pipedecode.profiles.registry import resolve_profile
    from pipedecode.runtime.model_runner import PagedModelRunner

    profile = resolve_profile(args.profile)
    model = build_model(args.model, dtype=torch.bfloat16, seed=0, device="cuda")
    most = max(p * t for p, t in shapes)
    runner = PagedModelRunner(model, RunnerConfig(
        profile, kv_cache_memory_bytes=4 * GIB, max_num_seqs=max(p for p, _ in shapes),
        max_num_batched_tokens=most))
    if runner.cache.num_slots < most:
        parser.error(f"the largest shape needs {most} KV slots; the 4 GiB pool holds "
                     f"{runner.cache.num_slots}")
    shape = model_shape(model)
    cost = CostModel(shape, profile)
    rows = []
    for s in shapes:
        rows.append(measure(runner, cost, s, args.repeats))
        print({k: round(v, 1) if isinstance(v, float) else v for k, v in rows[-1].items()},
              flush=True)
    result = {**record.environment(), "model": args.model, "layers": shape.num_layers,
              "profile": profile.name, "repeats": args.repeats, "rows": rows}
    record.publish(args.out, "prefill_overhead", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
