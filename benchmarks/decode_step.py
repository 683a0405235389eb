"""Decode-step benchmark: pipedecode sequential vs interleaved vs transformers, at real shapes.

Random weights (all layers) of Llama-3-8B / Llama-2-7B, a KV cache of random values, CUDA graphs
for pipedecode, medians of CUDA-event timings (`runtime.timing`). Points whose weights + KV cache
do not fit the GPU are listed as skipped. Columns: transformers eager and StaticCache +
torch.compile (decode_step_baselines.py), pipedecode sequential, pipedecode interleaved (the
planner's schedule where one is given in --schedules, else the best of --splits memory
partitions, which the table says), the planner's predicted step, the floors of the cost model.
Writes <out>/decode_step_<gpu>.json and .md (decode_step_report.py renders and merges them).

Usage: python benchmarks/decode_step.py [--out DIR] [--models llama-3-8b,llama-2-7b] [--points ...]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import record  # noqa: E402  (benchmarks/record.py)
from decode_step_breakdown import stage_breakdown, with_kv_eviction  # noqa: E402
from decode_step_points import (SLACK, balanced_groups, context_lens_for, fits,  # noqa: E402
                                floors_us, grid_points, point_name)
from decode_step_report import BENCHMARK, markdown  # noqa: E402
from pipedecode.runtime.timing import time_rounds, time_us  # noqa: E402

KERNELS_NOTE = ("hybrid: cuBLAS GEMMs on the whole GPU (sequential), the partition-aware Triton "
                "matmul on partitions (interleaved); Triton attention, RoPE+KV write, RMSNorm")


def _candidates(shape, lens, args, planner_schedule) -> list[tuple]:
    """(name, schedule, graph mode) of every interleaved run of a point: the planner's schedule
    (alone and with the executor's guard), then each split x micro-batch count x graph mode."""
    from pipedecode.runtime.executor import GRAPH_MODES
    from pipedecode.runtime.program import manual_schedule

    out = [] if planner_schedule is None else [("planner", planner_schedule, GRAPH_MODES[0])]
    if planner_schedule is not None and planner_schedule.mode == "interleaved":
        out.append(("planner+guard", planner_schedule, GRAPH_MODES[0]))
    total = torch.cuda.get_device_properties(0).multi_processor_count
    for n in args.micro_batches:
        for m in args.splits:
            for mode in args.graph_modes:
                name = f"split{m}" + (f"x{n}" if n != 2 else "") + \
                    ("" if mode == GRAPH_MODES[0] else f"-{mode}")
                schedule = manual_schedule(shape, lens, balanced_groups(lens, n), m, total - m)
                out.append((name, schedule, mode))
    return out


def _kernel_set(name: str, kv_eviction: str):
    from pipedecode.runtime.ops import kernel_set

    kernels = kernel_set(name, "cuda")
    return with_kv_eviction(kernels, kv_eviction) if kv_eviction else kernels


def pipedecode_point(weights, lens, args, planner_schedule=None) -> dict:
    """Sequential and every interleaved candidate of one point, timed in rotating rounds."""
    from pipedecode.runtime.executor import Executor
    from pipedecode.runtime.step import DecodeStep

    shape, batch = weights.shape, len(lens)
    step = DecodeStep(weights, batch, max(lens) + SLACK)
    if args.kv_eviction:
        step.kernels = with_kv_eviction(step.kernels, args.kv_eviction)
    for cache in step.k_cache + step.v_cache:
        cache.normal_()
    tokens = torch.randint(0, shape.vocab_size, (batch,), device="cuda")
    ctx = torch.tensor(lens, dtype=torch.int32, device="cuda")
    row: dict = {}
    runs = {"sequential": Executor(weights, batch, step.max_context, step=step)}
    runs["sequential"].set_inputs(tokens, ctx)
    runs["sequential"].run()         # captured now, with the default kernels
    if args.triton_seq:              # the same step with the Triton matmul on the whole GPU
        own, step.kernels = step.kernels, _kernel_set("triton", "")
        tri = Executor(weights, batch, step.max_context, step=step)
        tri.set_inputs(tokens, ctx)
        row["sequential_triton_us"] = time_us(tri.run, iters=5, repeats=5)
        step.kernels = own
        del tri
    if args.kernels != "auto":       # a kernel set other than the default for the splits
        step.kernels = _kernel_set(args.kernels, args.kv_eviction)
        row["interleaved_kernels"] = args.kernels
    for name, schedule, mode in _candidates(shape, lens, args, planner_schedule):
        ex = Executor(weights, batch, step.max_context, step=step, schedule=schedule,
                      autotune=name == "planner+guard", graphs=mode)
        ex.set_inputs(tokens, ctx)
        ex.run()                     # captured (and, for the guard, chosen) before timing
        runs[name] = ex
    timed, row["round_samples_us"] = time_rounds({name: ex.run for name, ex in runs.items()})
    row["sequential_us"] = timed.pop("sequential")
    best = None
    for name, us in timed.items():
        info = runs[name].describe()
        row.setdefault("interleaved_by_split", {})[name] = {"us": us, **info}
        if name.startswith("planner"):
            row[name.replace("+", "_") + "_us"] = us
        elif best is None or us < best[1]:
            best = (name, us)
    if best is not None:
        row["interleaved_best_split"], row["interleaved_best_split_us"] = best
    del runs, step
    gc.collect()
    return row


def load_planner_schedule(directory: str | None, name: str):
    if not directory or not os.path.exists(os.path.join(directory, f"{name}.json")):
        return None
    from pipedecode.planner.schedule import Schedule

    with open(os.path.join(directory, f"{name}.json")) as fh:
        return Schedule.from_json(fh.read())


def _short(row: dict) -> dict:
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()
            if k not in ("interleaved_by_split", "round_samples_us")}


def _measure_point(row: dict, weights, lens, args) -> None:
    schedule = load_planner_schedule(args.schedules, row["name"])
    if schedule is not None:
        row.update(planner_predicted_us=schedule.predicted_step_us, planner_mode=schedule.mode,
                   planner_roofline_floor_us=schedule.roofline_floor_us)
    try:
        row.update(pipedecode_point(weights, lens, args, schedule))
        if row["name"].split("_", 1)[1] in args.breakdown:
            row["breakdown"] = [stage_breakdown(weights, lens, m, args.kernels, args.kv_eviction)
                                for m in args.splits]
    except torch.OutOfMemoryError as exc:
        row["skipped"] = f"out of memory: {str(exc)[:80]}"
    torch.cuda.empty_cache()
    print(_short(row), flush=True)


def run_model(spec: str, args, profile) -> list[dict]:
    from pipedecode.models import model_shape
    from pipedecode.runtime.weights import random_weights

    shape = model_shape(spec)
    free = torch.cuda.mem_get_info()[0]
    rows, todo = [], []
    for batch, context, mixed in grid_points(spec, args.extra, args.points):
        lens = context_lens_for(batch, context, mixed)
        row = {"model": spec, "batch": batch, "context": context if mixed is None else
               f"mixed {mixed[1]}-{mixed[2]}", "kv_tokens": sum(lens),
               "name": point_name(spec, batch, context), **floors_us(shape, lens, profile)}
        if not fits(shape, batch, max(lens) + SLACK, free):
            row["skipped"] = "weights + KV cache do not fit in GPU memory"
        else:
            todo.append((row, lens))
        rows.append(row)
    if todo:
        weights = random_weights(shape, max_positions=max(max(l) for _, l in todo) + SLACK,
                                 device="cuda", dtype=torch.bfloat16)
        for row, lens in todo:
            _measure_point(row, weights, lens, args)
        del weights
        gc.collect()
        torch.cuda.empty_cache()
    if todo and (args.hf_eager or args.compile_points):
        from decode_step_baselines import hf_columns

        hf_columns(spec, todo, args.hf_eager, args.compile_points,
                   lambda row: print(_short(row), flush=True))
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=record.RESULTS, help="folder for decode_step_<gpu>.json/.md")
    p.add_argument("--models", default="llama-3-8b,llama-2-7b")
    p.add_argument("--splits", default="40,48,64",
                   help="memory-partition SM counts of the manual interleaved runs")
    p.add_argument("--micro-batches", default="2",
                   help="micro-batch counts tried at each split, e.g. 2,3,4 (split<m>x<n>)")
    p.add_argument("--graph-modes", default="one",
                   help="executor graph modes tried at each split: one (the executor's default), "
                        "per_partition (split<m>-per_partition)")
    p.add_argument("--schedules", default=None, help="folder of planner schedule JSONs "
                                                     "(benchmarks/plan_grid.py writes them)")
    p.add_argument("--hf-eager", action="store_true", help="also time transformers eager")
    p.add_argument("--compile-points", default="", help="e.g. llama-3-8b:64x1024,...")
    p.add_argument("--points", default="", help="only these, e.g. 64x512,256x1024,mixed")
    p.add_argument("--triton-seq", action="store_true",
                   help="also time sequential with the Triton matmul (diagnostic column)")
    p.add_argument("--extra", default="", help="points outside the grid, e.g. 1024x256")
    p.add_argument("--breakdown", default="", help="points to break down, e.g. b512_c512")
    p.add_argument("--kernels", default="auto", help="kernel set of the interleaved splits and "
                   "breakdowns: auto (hybrid on CUDA), triton, cublas (diagnostic)")
    p.add_argument("--kv-eviction", default="", choices=["", "evict_first"],
                   help="L2 eviction policy of the attention's K/V loads (diagnostic)")
    args = p.parse_args(argv)
    args.splits = [int(s) for s in args.splits.split(",") if s]
    args.micro_batches = [int(n) for n in args.micro_batches.split(",") if n]
    args.graph_modes = [m for m in args.graph_modes.split(",") if m]
    args.compile_points = set(filter(None, args.compile_points.split(",")))
    args.points = set(filter(None, args.points.split(",")))
    args.extra = [tuple(int(v) for v in p.split("x")) for p in args.extra.split(",") if p]
    args.breakdown = set(filter(None, args.breakdown.split(",")))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("decode_step: needs a CUDA GPU", file=sys.stderr)
        return 2
    from pipedecode.profiles.registry import local_profile

    profile = local_profile()
    result = {**record.environment(), "profile": profile.name,
              "profile_source": profile.source, "peak_tflops": profile.peak_flops_per_s / 1e12,
              "hbm_tbs": profile.hbm_bytes_per_s / 1e12, "splits": args.splits,
              "kernels": KERNELS_NOTE, "kv_eviction": args.kv_eviction, "rows": []}
    for spec in args.models.split(","):
        result["rows"] += run_model(spec, args, profile)
        record.write(args.out, BENCHMARK, result, markdown(result))   # keep partial results
    record.publish(args.out, BENCHMARK, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
