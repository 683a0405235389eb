"""Decode-step benchmark: pipedecode sequential vs the planner's step vs co-resident and
interleaved runs vs transformers, at real shapes, and the overlap targets met or not.

Random weights (all layers) of Llama-3-8B / Llama-2-7B, a KV cache of random values, CUDA graphs
for pipedecode, medians of CUDA-event timings (`runtime.timing`), every run of a point timed in
rotating rounds. Points whose weights + KV cache do not fit the GPU are listed as skipped. Runs
and their JSON fields (microseconds):
- `sequential_us`: pipedecode sequential, the default kernels (the TMA decode attention on
  Hopper); `op_floor_us` is its own floor (`CostModel.op_floor_us`).
- the planner's schedule from --schedules (planned for the profile named there):
  `planner_unguarded_us` its mode as planned, `planner_guarded_us` with the executor's guard
  (`autotune`: the planned graph against sequential, the faster kept) as a user gets it; for a
  sequential plan the two are one run. `planner_guard_kept` is the mode the guard kept.
- co-resident: `coresident_planner_us` the planner's micro-batches run co-resident (where it has
  two or more and did not choose co-resident itself), `coresident_best_us` the best of the
  manual co-resident runs (--coresident-kib budgets x --micro-batches, balanced micro-batches;
  `coresident_best` names it: co<KiB>[x<n>]).
- interleaved: the best of --splits memory partitions x --micro-batches (`split<m>[x<n>]`).
- transformers eager and StaticCache + torch.compile (decode_step_baselines.py), optional.
A run that fell back to sequential (no partitions, no TMA kernel) is recorded with its reason
and never counts as its mode. decode_step_targets.py computes the targets. Writes
<out>/decode_step_<gpu>.json and .md (decode_step_report.py renders and merges them).

Usage: python benchmarks/decode_step.py [--out DIR] [--models llama-3-8b,llama-2-7b] [--points ...]
       [--quick: Llama-3-8B's points whose micro-batches can overlap, no interleaved splits]

Re-measuring the grid with a fresh profile on one GPU (PuLP installed there, for plan_grid.py):
    python -m pipedecode.cli profile --quick --out P.json
    python benchmarks/plan_grid.py --device P.json --out SCHED --extra 2048x256,768x1024
    python benchmarks/decode_step.py --schedules SCHED --profile P.json \
        --extra 2048x256,768x1024 --splits "" --out DIR
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
from decode_step_targets import targets  # noqa: E402
from pipedecode.runtime.timing import time_rounds, time_us  # noqa: E402

# Llama-3-8B points with two micro-batches of at least min_micro_batch_tokens (157 on the H200)
QUICK_POINTS = ("512x512", "1024x512", "2048x256", "768x1024")
KERNELS_NOTE = ("hybrid: cuBLAS GEMMs on the whole GPU (sequential), the partition-aware Triton "
                "matmul on partitions (interleaved) and within the attention's budget "
                "(co-resident); the TMA decode attention on Hopper (Triton elsewhere), Triton "
                "RoPE+KV write, RMSNorm")


def candidates(shape, lens, args, planner_schedule, total: int) -> list[tuple]:
    """(name, schedule, graph mode, guarded) of every overlapped or planned run of a point: the
    planner's schedule (as planned, and with the executor's guard where it overlaps), its
    micro-batches co-resident, then each co-resident budget and split x micro-batch count."""
    from pipedecode.runtime.executor import GRAPH_MODES
    from pipedecode.runtime.program import manual_schedule

    one, out = GRAPH_MODES[0], []
    budget = args.coresident_kib[0] * 1024 if args.coresident_kib else 65536
    if planner_schedule is not None:
        out.append(("planner", planner_schedule, one, False))
        if planner_schedule.mode != "sequential":
            out.append(("planner+guard", planner_schedule, one, True))
        groups = [list(mb.request_ids) for mb in planner_schedule.micro_batches]
        if len(groups) > 1 and planner_schedule.mode != "coresident":
            out.append(("coresident_planner", manual_schedule(
                shape, lens, groups, total, total, mode="coresident",
                attention_smem_bytes=budget), one, False))
    for n in args.micro_batches:
        suffix = f"x{n}" if n != 2 else ""
        for kib in args.coresident_kib:
            out.append((f"co{kib}{suffix}", manual_schedule(
                shape, lens, balanced_groups(lens, n), total, total, mode="coresident",
                attention_smem_bytes=kib * 1024), one, False))
        for m in args.splits:
            for mode in args.graph_modes:
                name = f"split{m}{suffix}" + ("" if mode == one else f"-{mode}")
                schedule = manual_schedule(shape, lens, balanced_groups(lens, n), m, total - m)
                out.append((name, schedule, mode, False))
    return out


def triton_attention(kernels):
    """The kernel set with the Triton split-KV decode attention (the default before the TMA
    kernel) in place of its own: the sequential step's diagnostic comparison."""
    import dataclasses

    from pipedecode.runtime import kernels as kmod

    def attention(q, k_cache, v_cache, context_lens, *, out, sm_count=None, scale=None,
                  context_starts=None, block_tables=None, lane=None):
        return kmod.decode_attention(q, k_cache, v_cache, context_lens, out=out,
                                     sm_count=sm_count, scale=scale, impl="triton",
                                     context_starts=context_starts, block_tables=block_tables)

    return dataclasses.replace(kernels, name=f"{kernels.name}+triton-attention",
                               decode_attention=attention)


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
    if args.triton_attention_seq:    # sequential with the Triton split-KV attention (the old
        own, step.kernels = step.kernels, triton_attention(step.kernels)   # default), in rounds
        runs["sequential_triton_attention"] = Executor(weights, batch, step.max_context,
                                                       step=step)
        runs["sequential_triton_attention"].set_inputs(tokens, ctx)
        runs["sequential_triton_attention"].run()       # captured with these kernels
        step.kernels = own
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
    total = torch.cuda.get_device_properties(0).multi_processor_count
    for name, schedule, mode, guarded in candidates(shape, lens, args, planner_schedule, total):
        ex = Executor(weights, batch, step.max_context, step=step, schedule=schedule,
                      autotune=guarded, graphs=mode)
        ex.set_inputs(tokens, ctx)
        ex.run()                     # captured (and, for the guard, chosen) before timing
        runs[name] = ex
    timed, row["round_samples_us"] = time_rounds({name: ex.run for name, ex in runs.items()})
    row["sequential_us"] = timed.pop("sequential")
    if "sequential_triton_attention" in timed:
        row["sequential_triton_attention_us"] = timed.pop("sequential_triton_attention")
    row.update(summarize(timed, {name: ex.describe() for name, ex in runs.items()},
                         planner_schedule))
    del runs, step
    gc.collect()
    return row


def summarize(timed: dict[str, float], infos: dict[str, dict], planner_schedule) -> dict:
    """The row's fields from each run's time and `Executor.describe()`: the planner's guarded
    and unguarded times, the co-resident and interleaved bests. A run whose executor fell back
    to sequential (its `fallback_reason`) does not count as its mode."""
    row: dict = {"runs": {name: {"us": us, **infos[name]} for name, us in timed.items()}}
    if planner_schedule is not None and "planner" in timed:
        row["planner_unguarded_us"] = timed["planner"]
        guarded = "planner+guard" if "planner+guard" in timed else "planner"
        row["planner_guarded_us"] = timed[guarded]
        row["planner_guard_kept"] = infos[guarded]["mode"]
        if infos["planner"]["mode"] != planner_schedule.mode:
            row["planner_fallback"] = infos["planner"].get("fallback_reason", "")
    bests: dict[str, tuple] = {}
    for name, us in timed.items():
        mode = infos[name]["mode"]
        if name.startswith("planner"):
            continue
        if name == "coresident_planner":
            if mode == "coresident":
                row["coresident_planner_us"] = us
            continue
        kind = "coresident" if name.startswith("co") else "interleaved"
        if mode == kind and (kind not in bests or us < bests[kind][1]):
            bests[kind] = (name, us)
    if "coresident" in bests:
        row["coresident_best"], row["coresident_best_us"] = bests["coresident"]
    if "interleaved" in bests:
        row["interleaved_best_split"], row["interleaved_best_split_us"] = bests["interleaved"]
    return row


def load_planner_schedule(directory: str | None, name: str):
    if not directory or not os.path.exists(os.path.join(directory, f"{name}.json")):
        return None
    from pipedecode.planner.schedule import Schedule

    with open(os.path.join(directory, f"{name}.json")) as fh:
        return Schedule.from_json(fh.read())


def _short(row: dict) -> dict:
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()
            if k not in ("runs", "round_samples_us")}


def _measure_point(row: dict, weights, lens, args) -> None:
    schedule = load_planner_schedule(args.schedules, row["name"])
    if schedule is not None:
        row.update(planner_predicted_us=schedule.predicted_step_us, planner_mode=schedule.mode,
                   planner_roofline_floor_us=schedule.roofline_floor_us,
                   planner_reason=schedule.mode_reason)
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
    p.add_argument("--triton-attention-seq", action="store_true",
                   help="also time sequential with the Triton split-KV attention, the default "
                        "before the TMA kernel (diagnostic column)")
    p.add_argument("--coresident-kib", default="64",
                   help="attention shared-memory budgets (KiB) of the manual co-resident runs "
                        "(co<KiB>[x<n>]); the first is the planner micro-batching's")
    p.add_argument("--profile", default=None,
                   help="profile name or JSON for the floors (default: this GPU's shipped one; "
                        "give the one --schedules were planned with)")
    p.add_argument("--extra", default="", help="points outside the grid, e.g. 1024x256")
    p.add_argument("--breakdown", default="", help="points to break down, e.g. b512_c512")
    p.add_argument("--kernels", default="auto", help="kernel set of the interleaved splits and "
                   "breakdowns: auto (hybrid on CUDA), triton, cublas (diagnostic)")
    p.add_argument("--kv-eviction", default="", choices=["", "evict_first"],
                   help="L2 eviction policy of the attention's K/V loads (diagnostic)")
    p.add_argument("--quick", action="store_true",
                   help=f"only Llama-3-8B at {', '.join(QUICK_POINTS)} (the grid's points "
                        f"whose micro-batches are large enough to overlap), no splits")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.points, args.splits = "llama-3-8b", ",".join(QUICK_POINTS), ""
        args.extra = ",".join(filter(None, [args.extra, "2048x256,768x1024"]))
    args.splits = [int(s) for s in args.splits.split(",") if s]
    args.coresident_kib = [int(k) for k in args.coresident_kib.split(",") if k]
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
    from pipedecode.profiles.registry import resolve_profile

    profile = resolve_profile(args.profile)
    result = {**record.environment(), "profile": profile.name,
              "profile_source": profile.source, "peak_tflops": profile.peak_flops_per_s / 1e12,
              "hbm_tbs": profile.hbm_bytes_per_s / 1e12, "splits": args.splits,
              "coresident_kib": args.coresident_kib, "micro_batches": args.micro_batches,
              "kernels": KERNELS_NOTE, "kv_eviction": args.kv_eviction, "rows": []}
    for spec in args.models.split(","):
        result["rows"] += run_model(spec, args, profile)
        result["targets"] = targets(result["rows"])
        record.write(args.out, BENCHMARK, result, markdown(result))   # keep partial results
    record.publish(args.out, BENCHMARK, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
