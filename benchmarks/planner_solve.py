"""How long planning takes: 512 requests on Llama-3-70B (80 layers), both solvers.

Times `build_problem` + `solve` (ILP for the SM split and grouping, exact-cost refinement, and,
where a queue is given, the switch point) on this machine's CPU, and records the ILP's size.
The 70B model's bf16 weights (141 GB) fit no single GPU here, so the KV budget is passed
explicitly: this benchmark times the planner, it does not claim the batch fits.

    python benchmarks/planner_solve.py    # writes benchmarks/results/planner_solve.{json,md}
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import random
import statistics
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


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"# Planner solve time: {REQUESTS} requests, {MODEL} (80 layers)", "",
             f"Measured {meta['date']} at commit {meta.get('commit', 'unknown')} on "
             f"{meta['machine']} ({meta['cores']} cores), Python "
             f"{meta['python']}, pulp {meta['pulp']}, ortools {meta['ortools']}. Wall time of "
             f"build_problem + solve, median and max of {rows[0]['repeats']} solves (the first "
             f"solve of a process includes imports). Target: under 2 s.", "",
             "| device (profile) | solver | contexts | switch point | buckets | ILP vars / "
             "constraints | median s | max s | plan | predicted / sequential ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        plan = f"{r['mode']} ({r['memory_sms']} SMs)" if r["mode"] == "interleaved" else r["mode"]
        sw = f"yes (after {r['switch_step']})" if r["switch_point"] else "no"
        lines.append(f"| {r['device']} ({r['profile_source']}) | {r['solver']} | "
                     f"{r['contexts']} | {sw} | {r['buckets']} | "
                     f"{r['ilp_variables']} / {r['ilp_constraints']} | {r['solve_s_median']:.2f} | "
                     f"{r['solve_s_max']:.2f} | {plan} | {r['predicted_step_ms']:.1f} / "
                     f"{r['sequential_step_ms']:.1f} |")
    lines += ["", "Predicted step times come from the profile named in the first column (a "
              "measured profile, when shipped in pipedecode/profiles/data, wins over the analytic "
              "one), with the KV budget set to 1 TiB because 70B bf16 weights fit no single GPU."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    solve(build_problem("tiny-llama", "h100", [8, 8]))   # warm imports outside the timings
    rows = [run_case(device, solver, kind, switch, args.repeats)
            for device in ("h100", "h200")
            for solver in ("cbc", "ortools")
            for kind in ("uniform:128:4096", "normal:2048:768")
            for switch in (False, True)]
    meta = {"date": datetime.date.today().isoformat(), "commit": record.git_commit(),
            "machine": _cpu(),
            "cores": __import__("os").cpu_count(), "python": platform.python_version(),
            "pulp": version("pulp"), "ortools": version("ortools")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "planner_solve.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / "planner_solve.md").write_text(markdown(meta, rows))
    print(markdown(meta, rows))


if __name__ == "__main__":
    main()
