"""How long planning takes: 512 requests on Llama-3-70B (80 layers), both solvers; and the
engine's per-bucket planning of Llama-3-8B over the buckets 1..1024.

The first part times `build_problem` + `solve` (ILP for the SM split and grouping, exact-cost
refinement, and, where a queue is given, the switch point) on this machine's CPU, and records
the ILP's size. The 70B model's bf16 weights (141 GB) fit no single GPU here, so the KV budget
is passed explicitly: this benchmark times the planner, it does not claim the batch fits.

The second part (`--buckets-only` alone) times what the paged runner pays online with
interleaving on: `BucketPlans` planning every decode bucket of max_num_seqs 1024 (full
buckets, every request at one mean context) on the shipped h200 profile, for a few contexts,
each plan's wall time and how it was decided. `--before COMMIT` also times that part with the
package as it was at COMMIT (exported with `git archive`, run in a child process), the before
column of the comparison.

    python benchmarks/planner_solve.py --before 1e269b7   # writes results/planner_solve.*
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import record  # benchmarks/record.py
from pipedecode.planner import build_problem, solve
from pipedecode.planner.cost import CostModel
from pipedecode.planner.ilp import build_split_lp
from pipedecode.profiles import load_profile

RESULTS = Path(__file__).parent / "results"
MODEL = "llama-3-70b"
REQUESTS = 512
BUCKET_MODEL, BUCKET_DEVICE, MAX_NUM_SEQS = "llama-3-8b", "h200", 1024
BUCKET_CONTEXTS = (128, 512, 2048)


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _workload(kind: str, seed: int):
    rng = random.Random(seed)
    if kind == "uniform:128:4096":
        contexts = [rng.randint(128, 4096) for _ in range(REQUESTS)]
    else:   # normal:2048:768, clipped at 16
        contexts = [max(16, round(rng.gauss(2048, 768))) for _ in range(REQUESTS)]
    remaining = [rng.randint(1, 1024) for _ in range(REQUESTS)]
    waiting = [(rng.randint(128, 4096), rng.randint(16, 1024)) for _ in range(128)]
    return contexts, remaining, waiting


def run_case(device: str, solver: str, kind: str, switch: bool, repeats: int) -> dict:
    times, schedule = [], None
    # the solve time is measured, not whether the batch fits: memory beyond any GPU's
    roomy = dataclasses.replace(load_profile(device), memory_bytes=2 ** 41)
    contexts, remaining, waiting = _workload(kind, seed=0)
    extra = dict(remaining_output_lens=remaining, waiting=waiting) if switch else {}
    for _ in range(repeats):
        start = time.perf_counter()
        problem = build_problem(MODEL, roomy, contexts, **extra)
        schedule = solve(problem, solver)
        times.append(time.perf_counter() - start)
    lp = build_split_lp(problem, CostModel(problem.model, problem.profile))
    return {"device": device, "profile_source": problem.profile.source, "solver": solver,
            "contexts": kind, "switch_point": switch,
            "requests": REQUESTS, "buckets": len(problem.buckets),
            "ilp_variables": len(lp.variables), "ilp_constraints": len(lp.constraints),
            "solve_s_median": statistics.median(times), "solve_s_max": max(times),
            "repeats": repeats, "mode": schedule.mode, "memory_sms": schedule.memory_sms,
            "predicted_step_ms": schedule.predicted_step_us / 1e3,
            "sequential_step_ms": schedule.sequential_step_us / 1e3,
            "switch_step": schedule.switch.step if schedule.switch else None}


def _decided_by(plan) -> str:
    """How a bucket's plan was decided, from its reason (old and new packages alike)."""
    reason = plan.reason or ""
    if plan.micro_batches > 1:
        return "ILP: interleaved"
    if reason.startswith("planning failed"):
        return "failed: " + ("KV cache over the planner's budget" if "does not fit" in reason
                             else reason[:60])
    if "one row" in reason:
        return "one row"
    if "fewer than" in reason:
        return "too few requests (no ILP)"
    return "ILP: sequential"


def run_buckets(repeats: int) -> dict:
    """Every bucket of max_num_seqs 1024 planned by a fresh `BucketPlans` per context and
    repeat; per bucket the median wall time of its first (planning) lookup."""
    import pipedecode
    from pipedecode.models import model_shape
    from pipedecode.runtime.runner_plans import BucketPlans, bucket_sizes

    shape, profile = model_shape(BUCKET_MODEL), load_profile(BUCKET_DEVICE)
    sizes = bucket_sizes(MAX_NUM_SEQS)
    # warm the imports (PuLP, CBC) outside the timings: an ILP that is solved in every package
    solve(build_problem("tiny-llama", "h100", [8, 8], min_micro_batch_tokens=0))
    cells = []
    for context in BUCKET_CONTEXTS:
        times: dict[int, list[float]] = {r: [] for r in sizes}
        planned = {}
        for _ in range(repeats):
            plans = BucketPlans(shape, profile, sizes)
            for rows in sizes:
                start = time.perf_counter()
                planned[rows] = plans.current(rows, rows * context)
                times[rows].append(time.perf_counter() - start)
        cells += [{"context": context, "rows": rows, "plan_s": statistics.median(times[rows]),
                   "decided_by": _decided_by(planned[rows]),
                   "plan": [planned[rows].micro_batches, planned[rows].memory_sms,
                            planned[rows].predicted_step_us, planned[rows].sequential_step_us]}
                  for rows in sizes]
    return {"model": BUCKET_MODEL, "device": BUCKET_DEVICE, "profile_source": profile.source,
            "coresident_samples": len(profile.coresident_samples), "buckets": list(sizes),
            "repeats": repeats, "commit": record.git_commit(),
            "package": os.path.dirname(pipedecode.__file__), "cells": cells}


def run_before(commit: str, repeats: int) -> dict:
    """`run_buckets` with the package at `commit`: its tree exported to a temporary folder
    that comes first on the child's path."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", commit, "pipedecode"], cwd=root,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        out = Path(tmp) / "before.json"
        env = dict(os.environ, PYTHONPATH=tmp, PIPEDECODE_COMMIT=commit)
        subprocess.run([sys.executable, __file__, "--buckets-only", "--repeats", str(repeats),
                        "--json-out", str(out)], check=True, env=env, cwd=tmp)
        result = json.loads(out.read_text())
    if not result["package"].startswith(tmp):
        raise RuntimeError(f"the child imported pipedecode from {result['package']}, not {tmp}")
    return result


def _kinds(cells: list[dict]) -> str:
    kinds: dict[str, int] = {}
    for x in cells:
        kinds[x["decided_by"]] = kinds.get(x["decided_by"], 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))


def buckets_markdown(after: dict, before: dict | None) -> list[str]:
    def at(result: dict | None, c: int) -> list[dict]:
        return [x for x in (result or {}).get("cells", []) if x["context"] == c]

    lines = [f"## The engine's per-bucket planning: {after['model']} on {after['device']} "
             f"({after['profile_source']} profile, {after['coresident_samples']} co-resident "
             f"samples)", "",
             f"`BucketPlans` (pipedecode/runtime/runner_plans.py) planning each of the "
             f"{len(after['buckets'])} buckets of max_num_seqs {MAX_NUM_SEQS} "
             f"({after['buckets'][0]}..{after['buckets'][-1]}) once, full buckets, every "
             f"request at the context shown; per bucket the median of {after['repeats']} fresh "
             f"sweeps of the lookup that plans (wall time). After: commit {after['commit']}"
             + (f"; before: commit {before['commit']}, the same script on that package." if
                before else "."), "",
             "| context | total s after | total s before | decided by, after | "
             "decided by, before |", "|---|---|---|---|---|"]
    for c in BUCKET_CONTEXTS:
        now, was = at(after, c), at(before, c)
        old = f"{sum(x['plan_s'] for x in was):.2f}" if was else "-"
        lines.append(f"| {c} | {sum(x['plan_s'] for x in now):.2f} | {old} | {_kinds(now)} | "
                     f"{_kinds(was) if was else '-'} |")
    if before:
        plans = {(x["context"], x["rows"]): x["plan"] for x in before["cells"]}
        same = sum(plans.get((x["context"], x["rows"])) == x["plan"] for x in after["cells"])
        lines += ["", f"The plans (micro-batches, memory SMs, predicted and sequential step "
                      f"times) after equal those before in {same} of {len(after['cells'])} "
                      f"buckets x contexts."]
    lines += ["", "Per bucket, ms after / before:", "",
              "| rows | " + " | ".join(f"context {c}" for c in BUCKET_CONTEXTS) + " |",
              "|---|" + "---|" * len(BUCKET_CONTEXTS)]
    was = {(x["context"], x["rows"]): x["plan_s"] for x in (before or {}).get("cells", [])}
    for rows in after["buckets"]:
        cells = []
        for c in BUCKET_CONTEXTS:
            now = next(x["plan_s"] for x in at(after, c) if x["rows"] == rows)
            old = f"{was[(c, rows)] * 1e3:.1f}" if (c, rows) in was else "-"
            cells.append(f"{now * 1e3:.1f} / {old}")
        lines.append(f"| {rows} | " + " | ".join(cells) + " |")
    lines += ["", "Failed plans are batches whose KV cache exceeds the planner's default budget "
              "(90% of the device beside the weights); the runner then runs them sequentially "
              "with that reason. One row is never planned."]
    return lines


def _meta() -> dict:
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
            "commit": record.git_commit(), "machine": _cpu(), "cores": os.cpu_count(),
            "load_1min": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "pulp": version("pulp"), "ortools": version("ortools")}


def markdown(meta: dict, rows: list[dict], buckets: dict | None = None,
             before: dict | None = None) -> str:
    lines = ["# Planner solve time on the CPU", "",
             f"Measured {meta['date']} (UTC) at commit {meta['commit']} on {meta['machine']} "
             f"({meta['cores']} cores, shared: load {meta['load_1min']} over the last minute), "
             f"Python {meta['python']}, pulp {meta['pulp']}, ortools {meta['ortools']}.", ""]
    if rows:
        lines += [f"## {REQUESTS} requests, {MODEL} (80 layers)", "",
                  f"Wall time of build_problem + solve, median and max of {rows[0]['repeats']} "
                  f"solves (imports warmed first). Target: under 2 s.", "",
                  "| device (profile) | solver | contexts | switch point | buckets | ILP vars / "
                  "constraints | median s | max s | plan | predicted / sequential ms |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            plan = f"{r['mode']} ({r['memory_sms']} SMs)" if r["mode"] == "interleaved" \
                else r["mode"]
            sw = f"yes (after {r['switch_step']})" if r["switch_point"] else "no"
            lines.append(f"| {r['device']} ({r['profile_source']}) | {r['solver']} | "
                         f"{r['contexts']} | {sw} | {r['buckets']} | "
                         f"{r['ilp_variables']} / {r['ilp_constraints']} | "
                         f"{r['solve_s_median']:.2f} | {r['solve_s_max']:.2f} | {plan} | "
                         f"{r['predicted_step_ms']:.1f} / {r['sequential_step_ms']:.1f} |")
        lines += ["", "Predicted step times come from the profile named in the first column (a "
                  "measured profile, when shipped in pipedecode/profiles/data, wins over the "
                  "analytic one), with the KV budget set to 1 TiB because 70B bf16 weights fit "
                  "no single GPU.", ""]
    if buckets:
        lines += buckets_markdown(buckets, before)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--buckets-only", action="store_true",
                        help="only the engine's per-bucket planning")
    parser.add_argument("--before", metavar="COMMIT",
                        help="also time the per-bucket planning with the package at COMMIT")
    parser.add_argument("--json-out", type=Path,
                        help="with --buckets-only: write that part's JSON here, nothing else")
    args = parser.parse_args()
    before = run_before(args.before, args.repeats) if args.before else None
    buckets = run_buckets(args.repeats)
    if args.json_out:
        args.json_out.write_text(json.dumps(buckets, indent=1))
        return
    rows = []
    if not args.buckets_only:
        solve(build_problem("tiny-llama", "h100", [8, 8], min_micro_batch_tokens=0))  # imports
        rows = [run_case(device, solver, kind, switch, args.repeats)
                for device in ("h100", "h200")
                for solver in ("cbc", "ortools")
                for kind in ("uniform:128:4096", "normal:2048:768")
                for switch in (False, True)]
    meta = _meta()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "rows": rows, "buckets": buckets, "buckets_before": before}
    (args.out / "planner_solve.json").write_text(json.dumps(result, indent=1))
    (args.out / "planner_solve.md").write_text(markdown(meta, rows, buckets, before))
    print(markdown(meta, rows, buckets, before))


if __name__ == "__main__":
    main()
