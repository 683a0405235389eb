"""Decode-step benchmark: pipedecode sequential vs interleaved vs transformers, at real shapes.

Random weights (all layers) of Llama-3-8B / Llama-2-7B, a KV cache of random values, CUDA graphs
for pipedecode, medians of CUDA-event timings. Points whose weights + KV cache do not fit the GPU
are listed as skipped. Columns: transformers eager (DynamicCache), transformers StaticCache +
torch.compile (reduce-overhead; a few points, compiling is slow), pipedecode sequential,
pipedecode interleaved (the planner's schedule where one is given in --schedules, else the best of
--splits memory partitions, which the table says), the planner's predicted step, the roofline floor.

Usage: python benchmarks/decode_step.py --out DIR [--models llama-3-8b,llama-2-7b] [--points ...]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys

import torch

GRID = {"llama-3-8b": [(64, 512), (64, 1024), (64, 2048), (64, 4096), (128, 512), (128, 1024),
                       (128, 2048), (256, 512), (256, 1024), (512, 512), (1024, 512)],
        "llama-2-7b": [(64, 512), (64, 1024), (64, 2048), (128, 512), (256, 512)]}
MIXED = {"llama-3-8b": (256, 64, 1024), "llama-2-7b": (64, 64, 1024)}  # batch, min, max ctx
SLACK = 16  # cache positions beyond the longest context
KERNELS_NOTE = ("hybrid: cuBLAS GEMMs on the whole GPU (sequential), the partition-aware Triton "
                "matmul on partitions (interleaved); Triton attention, RoPE+KV write, RMSNorm")


def context_lens_for(batch: int, context: int | None, mixed: tuple | None, seed: int = 0):
    if mixed is None:
        return [context] * batch
    gen = torch.Generator().manual_seed(seed)
    return [int(x) for x in torch.randint(mixed[1], mixed[2] + 1, (batch,), generator=gen)]


def fits(shape, batch: int, max_context: int, free_bytes: int) -> bool:
    weights = (shape.weight_bytes_per_layer() * shape.num_layers
               + 2 * shape.vocab_size * shape.hidden_size * shape.dtype_bytes)
    kv = shape.kv_bytes_per_token() * batch * max_context
    activations = batch * (shape.vocab_size + 4 * shape.intermediate_size) * 4
    return weights + kv + activations < 0.92 * free_bytes


def roofline_floor_us(shape, lens, peak_flops: float, hbm_bytes_per_s: float) -> float:
    batch, kv_tokens = len(lens), sum(lens)
    params = (shape.weight_bytes_per_layer() // shape.dtype_bytes * shape.num_layers
              + shape.vocab_size * shape.hidden_size)
    flops = 2 * batch * params + 4 * kv_tokens * shape.num_heads * shape.head_dim * shape.num_layers
    bytes_moved = params * shape.dtype_bytes + kv_tokens * shape.kv_bytes_per_token()
    return max(flops / peak_flops, bytes_moved / hbm_bytes_per_s) * 1e6


def interleaved_bytes_floor_us(spec: str, kv_tokens: int, hbm_bytes_per_s: float,
                               micro_batches: int = 2) -> float:
    """Least time of an interleaved step: every micro-batch re-reads all weights, plus the KV."""
    from pipedecode.models import model_shape

    shape = model_shape(spec)
    weights = (shape.weight_bytes_per_layer() * shape.num_layers
               + shape.vocab_size * shape.hidden_size * shape.dtype_bytes)
    return (micro_batches * weights + kv_tokens * shape.kv_bytes_per_token()) / hbm_bytes_per_s * 1e6


def balanced_groups(lens: list[int], n: int = 2) -> list[list[int]]:
    """n micro-batches of equal size and near-equal KV tokens (longest first, dealt in turn)."""
    order = sorted(range(len(lens)), key=lambda r: -lens[r])
    return [order[i::n] for i in range(n)]


def make_schedule(shape, lens, memory_sms: int, compute_sms: int, groups=None,
                  micro_batches: int = 2):
    from pipedecode.runtime.program import manual_schedule

    return manual_schedule(shape, lens, groups or balanced_groups(lens, micro_batches),
                           memory_sms, compute_sms)


def time_rounds(fns: dict, rounds: int = 6, iters: int = 5) -> tuple[dict, dict]:
    """(median microseconds per call of each fn, the per-round samples), timed in rounds that
    each run every fn once, the order rotated by one each round. On the H200, a step timed right
    after another heavy step ran up to 4% slower than the same graph timed first (clocks under
    the power limit), so a fixed order charged that to whichever came second."""
    names = list(fns)
    samples = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(time_us(fns[name], iters, repeats=1))
    return {name: statistics.median(v) for name, v in samples.items()}, samples


def time_us(fn, iters: int = 5, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / iters)
    return statistics.median(times)


def with_kv_eviction(kernels, policy: str):
    """The kernel set with its decode attention loading K/V under an L2 eviction policy
    (diagnostic: does streaming the KV cache evict the weight tiles the GEMMs beside it reuse?)."""
    import dataclasses

    from pipedecode.runtime import kernels as kmod
    from pipedecode.runtime.kernels._attention import AttentionConfig

    cfg = AttentionConfig(kv_eviction=policy)

    def attention(q, k_cache, v_cache, context_lens, *, out, sm_count=None, scale=None,
                  context_starts=None):
        return kmod.decode_attention(q, k_cache, v_cache, context_lens, out=out,
                                     sm_count=sm_count, scale=scale, config=cfg,
                                     context_starts=context_starts)

    return dataclasses.replace(kernels, name=f"{kernels.name}+{policy}",
                               decode_attention=attention)


def pipedecode_point(weights, lens, splits, planner_schedule=None, triton_seq=False,
                     kernels: str = "auto", kv_eviction: str = "", micro_batches=(2,),
                     graph_modes=("one",)) -> dict:
    from pipedecode.runtime.executor import GRAPH_MODES, Executor
    from pipedecode.runtime.step import DecodeStep

    shape, batch = weights.shape, len(lens)
    step = DecodeStep(weights, batch, max(lens) + SLACK)
    if kv_eviction:
        step.kernels = with_kv_eviction(step.kernels, kv_eviction)
    for cache in step.k_cache + step.v_cache:
        cache.normal_()
    tokens = torch.randint(0, shape.vocab_size, (batch,), device="cuda")
    ctx = torch.tensor(lens, dtype=torch.int32, device="cuda")
    row = {}
    seq = Executor(weights, batch, step.max_context, step=step)
    seq.set_inputs(tokens, ctx)
    seq.run()                        # captured now, with the default kernels
    runs = {"sequential": seq}
    if triton_seq:                   # the same step with the Triton matmul on the whole GPU
        from pipedecode.runtime.ops import kernel_set

        own = step.kernels
        step.kernels = kernel_set("triton")
        tri = Executor(weights, batch, step.max_context, step=step)
        tri.set_inputs(tokens, ctx)
        row["sequential_triton_us"] = time_us(tri.run)
        step.kernels = own
        del tri
    if kernels != "auto":            # a kernel set other than the default for the splits
        from pipedecode.runtime.ops import kernel_set

        step.kernels = kernel_set(kernels, "cuda")
        if kv_eviction:
            step.kernels = with_kv_eviction(step.kernels, kv_eviction)
        row["interleaved_kernels"] = kernels
    candidates = [] if planner_schedule is None else [("planner", planner_schedule)] + (
        [("planner+guard", planner_schedule)] if planner_schedule.mode == "interleaved" else [])
    total = torch.cuda.get_device_properties(0).multi_processor_count
    candidates = [(name, schedule, GRAPH_MODES[0]) for name, schedule in candidates]
    candidates += [(f"split{m}" + (f"x{n}" if n != 2 else "") +
                    ("" if mode == GRAPH_MODES[0] else f"-{mode}"),
                    make_schedule(shape, lens, m, total - m, micro_batches=n), mode)
                   for n in micro_batches for m in splits for mode in graph_modes]
    for name, schedule, mode in candidates:
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
        if not name.startswith("planner") and (best is None or us < best[1]):
            best = (name, us, info)
    del runs, seq
    gc.collect()
    if best is not None:
        row["interleaved_best_split_us"], row["interleaved_best_split"] = best[1], best[0]
    del step
    return row


def _graph_of(fn, stream=None):
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    torch.cuda.synchronize()
    return graph


def stage_breakdown(weights, lens, memory_sms: int, kernels: str = "auto",
                    kv_eviction: str = "") -> dict:
    """Why interleaving wins or loses: compute-only and attention-only parts of the step, whole
    GPU (full batch) vs each partition (two micro-batches), and the two partitions at once."""
    from pipedecode.runtime.partition_streams import open_partition_streams
    from pipedecode.runtime.step import DecodeStep

    batch = len(lens)
    step = DecodeStep(weights, batch, max(lens) + SLACK)
    if kernels != "auto":
        from pipedecode.runtime.ops import kernel_set

        step.kernels = kernel_set(kernels, "cuda")
    if kv_eviction:
        step.kernels = with_kv_eviction(step.kernels, kv_eviction)
    for cache in step.k_cache + step.v_cache:
        cache.normal_()
    step.set_inputs(torch.randint(0, weights.shape.vocab_size, (batch,), device="cuda"),
                    torch.tensor(lens, dtype=torch.int32, device="cuda"))
    # one whole step first: every activation buffer then holds real values. GEMMs on a fresh
    # step's zeros run faster, which once made the first-timed column look cheap
    # (results/compute_gap_h100_2026-11-21.md)
    step.run_sequential()
    total = torch.cuda.get_device_properties(0).multi_processor_count
    streams = open_partition_streams(memory_sms, total - memory_sms, torch.device("cuda"))
    halves = [slice(0, batch // 2), slice(batch // 2, batch)]

    def compute(rows_list, sms):
        return lambda: [(step.pre_attn(l, r, sms), step.post_attn(l, r, sms))
                        for l in range(step.num_layers) for r in rows_list]

    def attention(rows_list, sms):
        return lambda: [step.attention(l, r, sms) for l in range(step.num_layers)
                        for r in rows_list]

    whole = slice(0, batch)
    out = {"memory_sms": streams.memory_sms, "compute_sms": streams.compute_sms,
           "kernels": step.kernels.name}
    out["compute_whole_us"] = time_us(_graph_of(compute([whole], None)).replay, 2, 3)
    out["attention_whole_us"] = time_us(_graph_of(attention([whole], None)).replay, 2, 3)
    out["compute_2mb_whole_us"] = time_us(_graph_of(compute(halves, None)).replay, 2, 3)
    g_c = _graph_of(compute(halves, streams.compute_sms), streams.compute_stream)
    g_a = _graph_of(attention(halves, streams.memory_sms), streams.memory_stream)
    out["compute_partition_us"] = time_us(g_c.replay, 2, 3)
    out["attention_partition_us"] = time_us(g_a.replay, 2, 3)

    def both():
        main = torch.cuda.current_stream()
        pairs = ((streams.compute_stream, g_c), (streams.memory_stream, g_a))
        for s, g in pairs:               # fork both first, then join: no false dependency
            s.wait_stream(main)
            with torch.cuda.stream(s):
                g.replay()
        for s, _ in pairs:
            main.wait_stream(s)

    out["both_partitions_concurrent_us"] = time_us(both, 2, 3)
    return out


def hf_model(spec: str):
    import transformers

    from pipedecode.models import SUPPORTED_FAMILIES, make_config

    config = make_config(spec)
    config._attn_implementation = "sdpa"
    cls = getattr(transformers, SUPPORTED_FAMILIES[config.model_type][1])
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = cls(config).eval()
    torch.set_default_dtype(torch.float32)
    return model


@torch.no_grad()
def hf_eager_us(model, batch: int, context: int) -> float:
    from transformers import DynamicCache

    cfg = model.config
    kv_heads, dim = cfg.num_key_value_heads, cfg.head_dim
    cache = DynamicCache(config=cfg)
    for layer in range(cfg.num_hidden_layers):
        k = torch.randn(batch, kv_heads, context - 1, dim, device="cuda", dtype=torch.bfloat16)
        cache.update(k, torch.randn_like(k), layer)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), device="cuda")
    pos = torch.full((batch, 1), context - 1, device="cuda")

    def step():
        model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True)
        cache.crop(-1)                  # drop the token this step appended

    us = time_us(step, iters=2, repeats=3)
    return us


@torch.no_grad()
def hf_compiled_us(model, batch: int, context: int) -> float:
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=context + SLACK)
    ids = torch.randint(0, model.config.vocab_size, (batch, 1), device="cuda")
    model(input_ids=ids, past_key_values=cache, use_cache=True)     # allocates the cache
    for layer in cache.layers:
        layer.keys.normal_()
        layer.values.normal_()
    pos = torch.full((batch, 1), context - 1, device="cuda")
    cache_position = torch.tensor([context - 1], device="cuda")
    compiled = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)

    def step():
        compiled(input_ids=ids, position_ids=pos, cache_position=cache_position,
                 past_key_values=cache, use_cache=True)

    for _ in range(3):
        step()
    us = time_us(step, iters=3, repeats=3)
    return us


def load_planner_schedule(directory: str | None, name: str):
    if not directory:
        return None
    path = os.path.join(directory, f"{name}.json")
    if not os.path.exists(path):
        return None
    from pipedecode.planner.schedule import Schedule

    with open(path) as fh:
        return Schedule.from_json(fh.read()) if hasattr(Schedule, "from_json") else None


def run_model(spec: str, args, peak_flops: float, hbm: float) -> list[dict]:
    from pipedecode.models import model_shape
    from pipedecode.runtime.weights import random_weights

    shape = model_shape(spec)
    points = [(b, c, None) for b, c in GRID[spec] + args.extra] \
        + [(MIXED[spec][0], None, MIXED[spec])]
    if args.points:
        points = [p for p in points if (f"{p[0]}x{p[1]}" if p[2] is None else "mixed")
                  in args.points]
    free = torch.cuda.mem_get_info()[0]
    rows, todo = [], []
    for batch, context, mixed in points:
        lens = context_lens_for(batch, context, mixed)
        name = f"{spec}_b{batch}_" + (f"c{context}" if mixed is None else "mixed")
        row = {"model": spec, "batch": batch, "context": context if mixed is None else
               f"mixed {mixed[1]}-{mixed[2]}", "kv_tokens": sum(lens), "name": name,
               "roofline_floor_us": roofline_floor_us(shape, lens, peak_flops, hbm)}
        if not fits(shape, batch, max(lens) + SLACK, free):
            row["skipped"] = "weights + KV cache do not fit in GPU memory"
        else:
            todo.append((row, lens))
        rows.append(row)
    weights = random_weights(shape, max_positions=max(max(l) for _, l in todo) + SLACK,
                             device="cuda", dtype=torch.bfloat16)
    for row, lens in todo:
        schedule = load_planner_schedule(args.schedules, row["name"])
        if schedule is not None:
            row["planner_predicted_us"] = schedule.predicted_step_us
            row["planner_mode"] = schedule.mode
            row["planner_roofline_floor_us"] = schedule.roofline_floor_us
        try:
            row.update(pipedecode_point(weights, lens, args.splits, schedule, args.triton_seq,
                                        args.kernels, args.kv_eviction, args.micro_batches,
                                        args.graph_modes))
            if row["name"].split("_", 1)[1] in args.breakdown:
                row["breakdown"] = [stage_breakdown(weights, lens, m, args.kernels,
                                                    args.kv_eviction) for m in args.splits]
        except torch.OutOfMemoryError as exc:
            row["skipped"] = f"out of memory: {str(exc)[:80]}"
        torch.cuda.empty_cache()
        print(_short(row), flush=True)
    del weights
    gc.collect()
    torch.cuda.empty_cache()
    if args.hf_eager or args.compile_points:
        hf_columns(spec, todo, args)
    return rows


def hf_columns(spec: str, todo: list, args) -> None:
    """transformers eager / StaticCache+compile times for the uniform points that fit."""
    model = hf_model(spec)
    for row, _ in todo:
        if row.get("skipped") or not isinstance(row["context"], int):
            continue
        key = f"{row['batch']}x{row['context']}"
        try:
            if args.hf_eager:
                row["hf_eager_us"] = hf_eager_us(model, row["batch"], row["context"])
            if f"{spec}:{key}" in args.compile_points:
                row["hf_compile_us"] = hf_compiled_us(model, row["batch"], row["context"])
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            row["hf_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
        gc.collect()
        torch.cuda.empty_cache()
        print(_short(row), flush=True)
    del model
    gc.collect()
    torch.cuda.empty_cache()


def _short(row: dict) -> dict:
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()
            if k not in ("interleaved_by_split", "round_samples_us")}


def _ms(row: dict, key: str) -> str:
    return f"{row[key] / 1000:.2f}" if key in row else "-"


def markdown(result: dict) -> str:
    lines = [f"# Decode step, {result['gpu']}, {result['date'][:16]} UTC", "",
             f"torch {result['torch']}, transformers {result['transformers']}; milliseconds per "
             f"decode step (all layers, bf16, random weights), median of CUDA-event timings of "
             f"graph replays, every column of a point timed in 6 rounds, the order rotated each round. planner = the executor running the planner's schedule (mode in "
             f"brackets; 'seq' means it chose sequential; for 'il' the time shown includes the "
             f"executor's guard, which times interleaved against sequential at set-up and keeps "
             f"the faster, and the unguarded time follows); pred. err = planner predicted vs the "
             f"unguarded measured time of its schedule; best split = fastest measured "
             f"interleaved run over memory partitions of {result['splits']} SMs. floor = "
             f"max(FLOPs / {result['peak_tflops']:.0f} TFLOP/s, bytes / {result['hbm_tbs']:.2f} "
             f"TB/s) over weights + KV cache; max il speedup = pd sequential / max(floor, bytes of an "
             f"interleaved step (each of 2 micro-batches re-reads the weights, plus the KV) / "
             f"{result['hbm_tbs']:.2f} TB/s): the most interleaving could win here. Kernels: {result.get('kernels', 'triton')}; (cuBLAS x) "
             f"or (Triton x) after pd sequential: the same step with that GEMM, where measured.",
             "",
             "| model | batch | context | HF eager | HF static+compile | pd sequential | "
             "pd planner | speedup | best split | max il speedup | predicted | pred. err | "
             "floor | floor/best |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r.get("skipped"):
            lines.append(f"| {r['model']} | {r['batch']} | {r['context']} | skipped: "
                         f"{r['skipped']} |" + " |" * 10)
            continue
        seq = r["sequential_us"]
        raw = r.get("planner_us", seq)
        chosen = r.get("planner_guard_us", raw)   # with the executor's measured fallback
        mode = {"interleaved": "il", "sequential": "seq"}.get(r.get("planner_mode"), "none")
        if "planner_guard_us" in r:
            mode += f", unguarded {raw / 1000:.2f}"
        label = "" if isinstance(r["context"], str) or (r["batch"], r["context"]) in \
            [tuple(p) for p in GRID.get(r["model"], [])] else " (extra)"
        split = r.get("interleaved_best_split_us")
        pred = r.get("planner_predicted_us")
        err = f"{(pred - raw) / raw:+.1%}" if pred else "-"
        best = min(seq, chosen, split or seq)
        il_floor = interleaved_bytes_floor_us(r["model"], r["kv_tokens"],
                                              result["hbm_tbs"] * 1e12)
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['context']}{label} | {_ms(r, 'hf_eager_us')} | "
            f"{_ms(r, 'hf_compile_us')} | {seq / 1000:.2f}"
            + (f" (cuBLAS {r['sequential_cublas_us'] / 1000:.2f})"
               if "sequential_cublas_us" in r else "")
            + (f" (Triton {r['sequential_triton_us'] / 1000:.2f})"
               if "sequential_triton_us" in r else "")
            + f" | {chosen / 1000:.2f} ({mode}) | "
            f"{seq / chosen:.3f} | "
            + (f"{split / 1000:.2f} ({r['interleaved_best_split']}, {seq / split:.3f}x)"
               if split else "-")
            + f" | {seq / max(r['roofline_floor_us'], il_floor):.2f}"
            + f" | {_ms(r, 'planner_predicted_us')} | {err} | {_ms(r, 'roofline_floor_us')} | "
            f"{r['roofline_floor_us'] / best:.2f} |")
    return "\n".join(lines) + "\n"


def merge_results(paths: list[str], hf_paths: list[str] = ()) -> dict:
    """One table from runs on one GPU: per point, later files' values win; from `hf_paths`
    only the transformers columns (hf_*) are taken, for points the main files measured."""
    merged: dict = {}
    result = None
    for path in list(hf_paths) + list(paths):
        hf_only = path in hf_paths and path not in paths
        with open(path) as fh:
            data = json.load(fh)
        if not hf_only:
            result = {k: v for k, v in data.items() if k != "rows"} if result is None else result
            result["splits"] = sorted(set(result.get("splits", [])) | set(data.get("splits", [])))
        for row in data["rows"]:
            key = (row["model"], row["batch"], str(row["context"]))
            entry = merged.setdefault(key, {"sources": []})
            entry.update({k: v for k, v in row.items() if k.startswith("hf_")} if hf_only
                         else row)
            entry["sources"].append(os.path.basename(path))
    result["rows"] = [r for r in merged.values() if "model" in r and "roofline_floor_us" in r
                      and ("sequential_us" in r or r.get("skipped"))]
    result["merged_from"] = [os.path.basename(p) for p in paths]
    result["hf_columns_from"] = [os.path.basename(p) for p in hf_paths]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for decode_step.json and .md")
    parser.add_argument("--models", default="llama-3-8b,llama-2-7b")
    parser.add_argument("--splits", default="40,48,64",
                        help="memory-partition SM counts tried when no planner schedule is given")
    parser.add_argument("--micro-batches", default="2",
                        help="micro-batch counts tried at each split, e.g. 2,3,4 (split<m>x<n>)")
    parser.add_argument("--graph-modes", default="one",
                        help="executor graph modes tried at each split: one (the executor's "
                             "default), per_partition (split<m>-per_partition)")
    parser.add_argument("--schedules", default=None, help="folder of planner schedule JSONs")
    parser.add_argument("--hf-eager", action="store_true")
    parser.add_argument("--compile-points", default="", help="e.g. llama-3-8b:64x1024,...")
    parser.add_argument("--points", default="", help="only these, e.g. 64x512,256x1024,mixed")
    parser.add_argument("--tag", default="")
    parser.add_argument("--triton-seq", action="store_true",
                        help="also time sequential with the Triton matmul (diagnostic column)")
    parser.add_argument("--extra", default="", help="points outside the grid, e.g. 1024x256")
    parser.add_argument("--breakdown", default="", help="points to break down, e.g. b512_c512")
    parser.add_argument("--kernels", default="auto",
                        help="kernel set for the interleaved splits and breakdowns: auto (hybrid "
                             "on CUDA), triton, cublas (diagnostic)")
    parser.add_argument("--kv-eviction", default="", choices=["", "evict_first"],
                        help="L2 eviction policy of the attention's K/V loads (diagnostic)")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="no GPU: merge these result JSONs into --out/decode_step_TAG.*")
    parser.add_argument("--merge-hf", nargs="+", default=[],
                        help="with --merge: take only the transformers columns from these")
    args = parser.parse_args(argv)
    if args.merge:
        write_result(merge_results(args.merge, args.merge_hf), args.out, args.tag)
        return 0
    args.splits = [int(s) for s in args.splits.split(",") if s]
    args.micro_batches = [int(n) for n in args.micro_batches.split(",") if n]
    args.graph_modes = [m for m in args.graph_modes.split(",") if m]
    args.compile_points = set(filter(None, args.compile_points.split(",")))
    args.points = set(filter(None, args.points.split(",")))
    args.extra = [tuple(int(v) for v in p.split("x")) for p in args.extra.split(",") if p]
    args.breakdown = set(filter(None, args.breakdown.split(",")))
    if not torch.cuda.is_available():
        print("decode_step: needs a CUDA GPU", file=sys.stderr)
        return 2
    import transformers

    from pipedecode.profiles.registry import load_profile

    gpu = torch.cuda.get_device_name()
    profile = load_profile("h200" if "H200" in gpu else "h100")
    result = {"gpu": gpu, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "peak_tflops": profile.peak_flops_per_s / 1e12,
              "hbm_tbs": profile.hbm_bytes_per_s / 1e12,
              "splits": args.splits, "kernels": KERNELS_NOTE, "kv_eviction": args.kv_eviction,
              "rows": []}
    for spec in args.models.split(","):
        result["rows"] += run_model(spec, args, profile.peak_flops_per_s, profile.hbm_bytes_per_s)
        write_result(result, args.out, args.tag, quiet=True)   # after each model: keep partials
    write_result(result, args.out, args.tag)
    return 0


def write_result(result: dict, out: str, tag: str, quiet: bool = False) -> None:
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, "decode_step" + (f"_{tag}" if tag else ""))
    with open(stem + ".json", "w") as fh:
        json.dump(result, fh, indent=1)
    with open(stem + ".md", "w") as fh:
        fh.write(markdown(result))
    if not quiet:
        print(markdown(result))


if __name__ == "__main__":
    sys.exit(main())
