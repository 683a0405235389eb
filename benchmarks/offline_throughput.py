"""Offline throughput on one GPU: pipedecode's engine against transformers' `generate`.

Llama-3-8B with random weights (all layers, bf16; no EOS, so outputs end at max_tokens), the
three workloads of offline_workloads.py (a: uniform 100..1024, b: ShareGPT-shaped lognormal,
c: 1024/1024), each cell timed once (`--repeats`: several times back to back, the median
kept), every request arriving at once. Columns: transformers
`generate` in static batches (left-padded, max_new_tokens the batch's longest output, greedy;
only the requested tokens count), pipedecode prefill-first and temporal, each with
interleaving on (the planner decides per batch size, the executor's measurement guards) and
off; under temporal on (b), also the oracle output-length predictor against the online
estimator (on a and c, ignore_eos makes every length known exactly: the two coincide). Per
cell: output and total tokens/s, peak GPU memory, preemptions, peak KV use, decode steps run
interleaved and (interleave on) the planner's calls and their time, paid online within
the cell (plans are kept per batch-size bucket and mean-context bin, and shared by later
cells); per workload its roofline bound. Targets reported met or missed. Each request's
max_tokens is its length (as in vLLM's throughput benchmark), so on (b) a predicted length
above it is cut to it; the estimator learns from the requests that finish.

Time: `--scale` keeps a fraction of each workload's requests (the distributions kept;
one number for every workload, or per workload as `a=1,b=1,c=0.25`, unlisted ones at 0.25;
default 0.25, which with the defaults fits about 8 minutes on an H200); transformers runs on
the first `--hf-requests` of each workload (the table says so); cells run in priority order
(transformers first, before pipedecode's pool takes the memory; then each workload's
pipedecode cells together, interleaving off and on alternating which runs first) and a cell
not started within `--budget-s` is reported as not run. One runner (one KV pool, its CUDA graphs) serves every pipedecode
cell, warmed up first by a sweep of every batch-size bucket and every small prefill's bucket
(untimed), so no cell pays for graph captures but an interleaved split's own.

Usage: python benchmarks/offline_throughput.py [--scale 0.25 | a=1,b=1,c=0.25] [--only a,b,c]
       [--budget-s 420] [--hf-requests 64] [--hf-batch 64] [--max-num-seqs 1024]
       [--interleave both|off|on] [--repeats 1] [--prefill-graphs on|off] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import record  # noqa: E402  (benchmarks/record.py)
from offline_report import markdown, short_table, targets  # noqa: E402
from offline_workloads import SIZES, make_workload, roofline_bound  # noqa: E402

GIB = 2 ** 30


def _cells(keys: list[str], interleave: tuple[bool, ...] = (False, True)) -> list[dict]:
    """Every cell, in the order they run: transformers on every workload, then each workload's
    pipedecode cells back to back. The order alternates so that no side always runs later in
    the measurement: interleaving off and on (those in `interleave`) from one workload to the
    next, and temporal and prefill-first from one group of cells to the next."""
    cells = [dict(workload=k, system="transformers") for k in keys]
    group = 0
    for i, k in enumerate(keys):
        for on in (interleave if i % 2 == 0 else interleave[::-1]):
            policies = ("temporal", "prefill-first")
            for policy in (policies if group % 2 == 0 else policies[::-1]):
                cells.append(dict(workload=k, system="pipedecode", policy=policy,
                                  interleave=on, predictor="online"))
            if k == "b" and not on:
                cells.append(dict(workload=k, system="pipedecode", policy="temporal",
                                  interleave=on, predictor="oracle"))
            group += 1
    return cells


def _sync_time() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    """GPU memory allocated at the peak since `_reset_peak` (0 on a CPU dry run)."""
    return torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else 0.0


@torch.no_grad()
def run_transformers(model, workload, prompts, args, deadline: float) -> dict:
    """Static batches of the first hf_requests requests, within `args.hf_budget_s` seconds per
    workload: transformers' own `max_time` ends a batch early, and only the tokens produced by
    then count (each row's, up to its own length), so the baseline never takes the pipedecode
    cells' time (unbounded, transformers took 264 s of a 210 s budget on an H200: 1024-token
    outputs at 6 tokens/s per sequence)."""
    n = min(args.hf_requests, workload.num_requests)
    deadline = min(deadline, time.perf_counter() + args.hf_budget_s)
    _reset_peak()
    done, out_tokens, in_tokens, start = 0, 0, 0, _sync_time()
    while done < n and time.perf_counter() < deadline:
        batch = list(range(done, min(done + args.hf_batch, n)))
        longest = max(len(prompts[i]) for i in batch)
        ids = torch.zeros(len(batch), longest, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, longest - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, longest - len(prompts[i]):] = 1
        new = max(workload.output_lens[i] for i in batch)
        left_s = max(deadline - time.perf_counter(), 1.0)
        out = model.generate(ids.to(model.device), attention_mask=mask.to(model.device),
                             max_new_tokens=new, max_time=left_s,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
        produced = out.shape[1] - longest          # steps run before max_time stopped it
        done += len(batch)
        out_tokens += sum(min(produced, workload.output_lens[i]) for i in batch)
        in_tokens += sum(workload.prompt_lens[i] for i in batch)
    seconds = _sync_time() - start
    return {"requests": done, "subset": done < workload.num_requests, "elapsed_s": seconds,
            "output_tokens_per_s": out_tokens / seconds,
            "total_tokens_per_s": (out_tokens + in_tokens) / seconds,
            "peak_gpu_gib": _peak_gib()}


def run_pipedecode(model, runner, workload, prompts, cell: dict) -> dict:
    from pipedecode.engine import LLM, SamplingParams
    from pipedecode.engine.predictor import OracleLengths

    predictor = OracleLengths(prompts, workload.output_lens) \
        if cell["predictor"] == "oracle" else None
    cfg = runner.config
    llm = LLM(model, device=cfg.profile, policy=cell["policy"], interleave=cell["interleave"],
              predictor=predictor, max_num_seqs=cfg.max_num_seqs,
              max_num_batched_tokens=cfg.max_num_batched_tokens,
              kv_cache_memory=cfg.kv_cache_memory_bytes, block_size=cfg.block_size,
              runner=runner.reuse)
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=workload.ignore_eos)
              for n in workload.output_lens]
    before = dict(runner.steps_by_executor)
    plans_before = (runner.plans.num_plans, runner.plans.plan_seconds)
    _reset_peak()
    start = _sync_time()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = _sync_time() - start
    short = sum(len(o.outputs[0].token_ids) != n for o, n in zip(outputs, workload.output_lens))
    if short:
        raise RuntimeError(f"{short} requests ended before their max_tokens")
    steps = {k: n - before.get(k, 0) for k, n in runner.steps_by_executor.items()}
    inter = sum(n for k, n in steps.items()
                if k[0] == "interleaved" and runner.executors[k].mode == "interleaved")
    s = llm.last_stats
    decode_steps = sum(steps.values())
    return {"requests": workload.num_requests, "elapsed_s": seconds,
            "output_tokens_per_s": s.output_tokens / seconds,
            "total_tokens_per_s": (s.output_tokens + s.prompt_tokens) / seconds,
            "peak_gpu_gib": _peak_gib(),
            "preemptions": s.preemptions, "peak_kv": s.peak_kv_usage,
            "prefill_s": s.prefill_s, "decode_s": s.decode_s, "decode_steps": decode_steps,
            "prefill_batches": s.prefill_batches,
            "interleaved_steps": inter, "plans": runner.plans.num_plans - plans_before[0],
            "plan_s": runner.plans.plan_seconds - plans_before[1],
            "mean_decode_batch": s.decode_tokens / decode_steps if decode_steps else 0.0}


def warm_up(model, runner) -> float:
    """Every bucket's graph captured, untimed: max_num_seqs requests of 16 tokens whose
    lengths make decode step j run exactly bucket j's rows (largest first), then every
    small prefill's graph."""
    from pipedecode.engine import LLM, SamplingParams

    cfg = runner.config
    sizes = sorted(runner.sizes, reverse=True) + [0]
    lengths = [j + 2 for j in range(len(sizes) - 1) for _ in range(sizes[j] - sizes[j + 1])]
    llm = LLM(model, device=cfg.profile, policy="prefill-first", interleave=False,
              max_num_seqs=cfg.max_num_seqs, max_num_batched_tokens=cfg.max_num_batched_tokens,
              kv_cache_memory=cfg.kv_cache_memory_bytes, block_size=cfg.block_size,
              runner=runner.reuse)
    start = _sync_time()
    llm.generate([[5 + i % 1000] * 16 for i in range(len(lengths))],
                 [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lengths],
                 use_tqdm=False)
    # prefills of ragged prompts up to 1024 tokens too, the shapes the cells meet (the first
    # timed cell still prefills ~0.7 s longer than the later ones; the cause is not found)
    most = min(1024, model.config.max_position_embeddings - 2)
    ragged = [[7 + i] * max(1, n * most // 1024)
              for i, n in enumerate((1024, 777, 513, 300, 129, 100, 64, 33))]
    llm.generate(ragged, SamplingParams(max_tokens=2, temperature=0, ignore_eos=True),
                 use_tqdm=False)
    if runner.prefill_graphs is not None:      # every small prefill's graph, as the decode's
        runner.prefill_graphs.capture_all()
    return _sync_time() - start


def build_runner(model, profile, max_num_seqs: int, prefill_graphs: bool = True):
    from pipedecode.engine.runner import RunnerConfig
    from pipedecode.runtime.model_runner import PagedModelRunner

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return PagedModelRunner(model, RunnerConfig(profile, max_num_seqs=max_num_seqs),
                            prefill_graphs=prefill_graphs)


def _pipedecode_cell(model, profile, w, prompts, cell, args, state: dict) -> dict:
    """One pipedecode cell on the shared runner, built (and warmed up) by the first."""
    if "error" in state:
        raise RuntimeError(f"the runner could not be built: {state['error']}")
    if "runner" not in state:
        try:
            runner = state["runner"] = build_runner(model, profile, args.max_num_seqs,
                                                    args.prefill_graphs == "on")
            args.warmup_s = warm_up(model, runner)
        except Exception as exc:
            state["error"] = f"{type(exc).__name__}: {exc}"
            raise
        args.kv_pool_gib = sum(t.numel() * t.element_size()
                               for t in runner.cache.k + runner.cache.v) / GIB
    return run_pipedecode(model, state["runner"], w, prompts, cell)


def median_run(runs: list[dict]) -> dict:
    """The run of median output tokens/s (the lower middle of an even count), with every
    run's output tokens/s beside it when there are several."""
    ranked = sorted(runs, key=lambda r: r["output_tokens_per_s"])
    row = dict(ranked[(len(ranked) - 1) // 2])
    if len(runs) > 1:
        row["output_tokens_per_s_runs"] = [r["output_tokens_per_s"] for r in runs]
    return row


def _run_cells(model, shape, profile, workloads, args, start: float) -> list[dict]:
    rows, state = [], {}
    prompts = {k: w.prompts(shape.vocab_size) for k, w in workloads.items()}
    deadline = start + args.budget_s
    for cell in _cells(list(workloads), args.interleave):
        w = workloads[cell["workload"]]
        row = dict(cell, status="ok")
        if time.perf_counter() >= deadline:
            rows.append(dict(row, status="not run (time budget)"))
            continue
        try:
            if cell["system"] == "transformers":
                row.update(run_transformers(model, w, prompts[w.key], args, deadline))
            else:
                row.update(median_run([_pipedecode_cell(model, profile, w, prompts[w.key], cell,
                                                        args, state)
                                       for _ in range(args.repeats)]))
        except Exception as exc:  # noqa: BLE001 - one failed cell is reported, the rest run
            row["status"] = f"error: {type(exc).__name__}: {exc}"[:200]
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()},
              flush=True)
        rows.append(row)
    args.runner_info = state["runner"].describe() if "runner" in state else None
    return rows


def run(args, model, profile, workloads: dict) -> dict:
    """Every cell of `workloads` for `model` (EOS already removed), the bounds and targets."""
    start = time.perf_counter()
    from pipedecode.models import model_shape

    shape = model_shape(model)
    bounds = {k: roofline_bound(w, shape, profile) for k, w in workloads.items()}
    args.warmup_s, args.kv_pool_gib = None, 0.0
    rows = _run_cells(model, shape, profile, workloads, args, start)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    result = {**record.environment(), "model": args.model, "layers": shape.num_layers,
              "dtype": dtype,
              "profile": profile.name, "scale": {k: args.scale[k] for k in workloads},
              "workloads": list(workloads),
              "requests": {k: w.num_requests for k, w in workloads.items()},
              "hf_requests": args.hf_requests, "hf_batch": args.hf_batch,
              "hf_budget_s": args.hf_budget_s,
              "max_num_seqs": args.max_num_seqs, "kv_pool_gib": args.kv_pool_gib,
              "interleave": ["on" if on else "off" for on in args.interleave],
              "repeats": args.repeats, "prefill_graphs": args.prefill_graphs,
              "budget_s": args.budget_s, "wall_s": time.perf_counter() - start,
              "warmup_s": args.warmup_s, "bounds": bounds, "rows": rows,
              "runner": args.runner_info}
    result["notes"] = (f"Graph warm-up (every bucket, untimed): {args.warmup_s or 0:.0f} s; "
                       f"the whole run: {result['wall_s']:.0f} s.")
    result["targets"] = targets(result)
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--scale", default="0.25",
                        help="fraction of each workload's requests: 0.25, or a=1,b=1,c=0.25")
    parser.add_argument("--only", default="a,b,c", help="workloads, e.g. a,c")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="no cell starts after this many seconds")
    parser.add_argument("--hf-requests", type=int, default=64)
    parser.add_argument("--hf-batch", type=int, default=64)
    parser.add_argument("--hf-budget-s", type=float, default=40.0,
                        help="seconds of transformers per workload (its batches end early)")
    parser.add_argument("--max-num-seqs", type=int, default=1024)
    parser.add_argument("--prefill-graphs", choices=("on", "off"), default="on",
                        help="small prefills from CUDA graphs (on, the engine's default) or "
                             "every prefill eager (off)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each pipedecode cell, back to back; the median is kept "
                             "and every run's tokens/s listed")
    parser.add_argument("--interleave", choices=("both", "off", "on"), default="both",
                        help="pipedecode cells with interleaving off, on or both (default)")
    parser.add_argument("--profile", default=None, help="device profile (default: this GPU's)")
    parser.add_argument("--out", default=record.RESULTS)
    args = parser.parse_args(argv)
    args.only = [k for k in args.only.split(",") if k]
    args.interleave = {"both": (False, True), "off": (False,), "on": (True,)}[args.interleave]
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    bad = [k for k in args.only if k not in SIZES]
    if bad:
        parser.error(f"--only: unknown workloads {bad}; use a, b, c")
    try:
        args.scale = parse_scale(args.scale)
    except ValueError as exc:
        parser.error(f"--scale: {exc}")
    return args


def parse_scale(text: str, default: float = 0.25) -> dict[str, float]:
    """`0.5` (every workload) or `a=1,c=0.25` (the others at `default`) -> {workload: scale}."""
    if "=" not in text:
        return dict.fromkeys(SIZES, float(text))
    scale = dict.fromkeys(SIZES, default)
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in SIZES:
            raise ValueError(f"unknown workload {key.strip()!r} in {text!r}; use a, b, c")
        scale[key.strip()] = float(value)
    return scale


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("offline_throughput: needs a CUDA GPU", file=sys.stderr)
        return 2
    from pipedecode.profiles.registry import resolve_profile
    from pipedecode.models import build_model

    workloads = {k: make_workload(k, args.scale[k]) for k in args.only}
    profile = resolve_profile(args.profile)
    model = build_model(args.model, dtype=torch.bfloat16, seed=0, device="cuda")
    model.generation_config.eos_token_id = model.config.eos_token_id = None
    result = run(args, model, profile, workloads)
    record.publish(args.out, "offline_throughput", result, markdown(result))
    print(short_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
