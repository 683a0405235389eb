"""The simulator at one GPU against measured engine runs: the same workload, the error.

Reads a measured run (or a list of them) from JSON: the engine's offline throughput benchmark
writes one, or a person types the simple form
    {"workload": "sharegpt", "policy": "temporal", "output_tokens_per_s": 9500.0,
     "total_tokens_per_s": 14000.0}
with optional model, device, requests, seed, max_num_seqs, max_num_batched_tokens,
ignore_eos and kv_blocks (`pipedecode.sim.calibrate.Measured`; other keys are ignored). A
JSON object holding a "runs" or "results" list is read as that list, and the result of
benchmarks/offline_throughput.py as its pipedecode cells that ran with interleaving off. Simulates each run's
workload on one GPU of its device with its policy and limits, and writes a markdown table of
measured vs simulated tokens/s with the error (the simulator is trusted within 10%) and the
same as JSON beside it. Pure CPU work.

    python benchmarks/sim_vs_measured.py measured.json \
        --out benchmarks/results/sim_vs_measured_h200.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pipedecode.commands.common import Outputs
from pipedecode.sim.calibrate import TOLERANCE, Measured, compare, markdown
from pipedecode.sim.strategies import SimOptions

OVERRIDABLE = ("model", "device", "requests", "seed")


def offline_runs(data: dict) -> list[dict]:
    """The pipedecode cells of an offline_throughput result (interleave off: the simulator
    prices decode steps sequentially) that ran, as measured runs of their workload's spec."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from offline_workloads import SPECS

    runs = [dict(workload=SPECS[row["workload"]], policy=row["policy"],
                 output_tokens_per_s=row["output_tokens_per_s"],
                 total_tokens_per_s=row["total_tokens_per_s"], model=data.get("model"),
                 device=data.get("profile"), requests=data["requests"][row["workload"]],
                 max_num_seqs=data.get("max_num_seqs"), ignore_eos=row["workload"] != "b")
            for row in data["rows"] if row.get("system") == "pipedecode"
            and row.get("status") == "ok" and not row.get("interleave")
            and row.get("predictor", "online") == "online"]
    return [{k: v for k, v in run.items() if v is not None} for run in runs]


def runs(data) -> list[dict]:
    """The measured runs a JSON document holds (an offline_throughput result's cells too)."""
    if isinstance(data, dict) and isinstance(data.get("rows"), list) and "requests" in data:
        return offline_runs(data)
    if isinstance(data, dict):
        for key in ("runs", "results"):
            if isinstance(data.get(key), list):
                return data[key]
        return [data]
    if isinstance(data, list):
        return data
    raise ValueError("the measured JSON must be an object or a list of objects")


def report(comparisons, source: str) -> str:
    ok = sum(c.within_tolerance for c in comparisons)
    return "\n".join([
        "# Simulator against measured engine runs (one GPU)", "",
        f"Measured: `{os.path.basename(source)}`. Simulated: `pipedecode.sim` on the same "
        f"workload (spec, request count, seed), policy and limits, one GPU of the named device "
        f"profile; the error is simulated / measured - 1. {ok} of {len(comparisons)} runs "
        f"within {TOLERANCE:.0%}.", "", markdown(comparisons)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measured", help="JSON of the measured run(s)")
    parser.add_argument("--out", default=None,
                        help="markdown to write (a .json of the same name beside it)")
    for name in OVERRIDABLE:
        parser.add_argument(f"--{name}", default=None, type=int if name in ("requests", "seed")
                            else str, help=f"{name} where the measured JSON does not say")
    parser.add_argument("--step-overhead-us", type=float, default=0.0,
                        help="controller CPU time per scheduling call to simulate (default 0)")
    args = parser.parse_args(argv)
    with open(args.measured) as f:
        data = json.load(f)
    given = {n: getattr(args, n) for n in OVERRIDABLE if getattr(args, n) is not None}
    try:
        options = SimOptions(step_overhead_us=args.step_overhead_us)
        comparisons = [compare(Measured.from_dict({**given, **run}), options)
                       for run in runs(data)]
    except ValueError as exc:
        print(f"sim_vs_measured: {exc}", file=sys.stderr)
        return 2
    text = report(comparisons, args.measured)
    if args.out:
        with Outputs() as outputs:
            outputs.write_text(args.out, text)
            outputs.write_text(os.path.splitext(args.out)[0] + ".json", json.dumps(
                [dict(measured=vars(c.measured), simulated=c.simulated.to_dict(),
                      output_error=c.output_error, total_error=c.total_error,
                      within_tolerance=c.within_tolerance) for c in comparisons], indent=1))
            outputs.commit()
    print(text)
    return 0 if all(c.within_tolerance for c in comparisons) else 1


if __name__ == "__main__":
    sys.exit(main())
