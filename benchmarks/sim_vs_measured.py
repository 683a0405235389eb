"""The simulator at one GPU against measured engine runs: the same workload, the error.

Reads a measured run (or a list of them) from JSON: the engine's offline throughput benchmark
writes one, or a person types the simple form
    {"workload": "sharegpt", "policy": "temporal", "output_tokens_per_s": 9500.0,
     "total_tokens_per_s": 14000.0}
with optional model, device, requests, seed, max_num_seqs, max_num_batched_tokens,
ignore_eos, kv_blocks and the engine's phases (elapsed_s, prefill_s, decode_s, decode_steps,
mean_decode_batch) (`pipedecode.sim.calibrate.Measured`; other keys are ignored). A JSON
object holding a "runs" or "results" list is read as that list, and the result of
benchmarks/offline_throughput.py as its pipedecode cells that ran with interleaving off (with
their phases and the runner's KV pool). Simulates each run's workload on one GPU of its device
with its policy and limits, and writes a markdown of measured vs simulated tokens/s with the
error (the simulator is trusted within 10%), the phases side by side, what each of the
engine's terms (`pipedecode.sim.engine_costs`) adds, and the same as JSON beside it. Pure CPU
work.

The host factor (the GPU machine's host speed over the CPU benchmark's) is the shipped one
unless `--fit-host-on` names a workload (an offline_throughput key a, b or c, or a spec) whose
runs it is fitted on (their untimed host time); every other run then validates it.

    python benchmarks/sim_vs_measured.py benchmarks/results/offline_throughput_h200.json \
        [more results ...] --fit-host-on c --out benchmarks/results/sim_vs_measured_h200.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import record  # noqa: E402  (benchmarks/record.py)
from offline_workloads import SPECS  # noqa: E402

from pipedecode.commands.common import Outputs  # noqa: E402
from pipedecode.sim import engine_costs  # noqa: E402
from pipedecode.sim.calibrate import (TOLERANCE, Measured, compare, fit_host_factor,  # noqa: E402
                                      markdown, phase_markdown)
from pipedecode.sim.strategies import SimOptions  # noqa: E402

OVERRIDABLE = ("model", "device", "requests", "seed")
PHASE_KEYS = ("elapsed_s", "prefill_s", "decode_s", "decode_steps", "mean_decode_batch")
# each row adds one of the engine's terms to the one above (the last is the simulator)
LADDER = (("cost model alone", dict(host_factor=0.0, padding=False, sampling=False,
                                     prefill_launch=False)),
          ("+ decode padding to the runner's buckets", dict(host_factor=0.0, sampling=False,
                                                            prefill_launch=False)),
          ("+ greedy sampling on the GPU", dict(host_factor=0.0, prefill_launch=False)),
          ("+ a prefill's kernel launches as its floor", dict(host_factor=0.0)),
          ("+ host time per step", {}))


def offline_runs(data: dict) -> list[dict]:
    """The pipedecode cells of an offline_throughput result (interleave off: the simulator
    prices decode steps sequentially) that ran, as measured runs of their workload's spec."""
    blocks = data.get("runner", {}).get("num_blocks")
    # a runner that names no prefill graphs (made before it had them) prefilled eagerly
    graphs = isinstance(data.get("runner", {}).get("prefill_graphs"), dict)
    runs = [dict(workload=SPECS[row["workload"]], policy=row["policy"],
                 output_tokens_per_s=row["output_tokens_per_s"],
                 total_tokens_per_s=row["total_tokens_per_s"], model=data.get("model"),
                 device=data.get("profile"), requests=data["requests"][row["workload"]],
                 max_num_seqs=data.get("max_num_seqs"), ignore_eos=row["workload"] != "b",
                 kv_blocks=blocks - 1 if blocks else None, prefill_graphs=graphs,
                 **{k: row.get(k) for k in PHASE_KEYS})
            for row in data["rows"] if row.get("system") == "pipedecode"
            and row.get("status") == "ok" and not row.get("interleave")
            and row.get("predictor", "online") == "online"]
    return [{k: v for k, v in run.items() if v is not None} for run in runs]


def every_cell(data) -> list[str]:
    """Every pipedecode cell of an offline_throughput result that ran, its prefill and decode
    time: the same prompts prefill alike in every cell (a prefill never interleaves), so a cell
    far from the others' prefill time says something of that cell's run ([] for other JSON)."""
    if not (isinstance(data, dict) and isinstance(data.get("rows"), list)):
        return []
    rows = [r for r in data["rows"] if r.get("system") == "pipedecode" and r.get("status") == "ok"
            and r.get("prefill_s") is not None]
    lines = ["| workload | policy | interleave | predictor | prefill s | decode s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| ({r['workload']}) `{SPECS.get(r['workload'], r['workload'])}` | {r['policy']} | "
              f"{'on' if r.get('interleave') else 'off'} | {r.get('predictor', 'online')} | "
              f"{r['prefill_s']:.2f} | {r['decode_s']:.2f} |" for r in rows]
    return lines if rows else []


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


def host_factor(measured: list[Measured], fit_on: str | None, given: float | None):
    """(the host factor, where it came from)."""
    if given is not None:
        return given, "given (--host-factor)"
    if fit_on is None:
        return engine_costs.HOST_FACTOR, "shipped (pipedecode.sim.engine_costs.HOST_FACTOR)"
    spec = SPECS.get(fit_on, fit_on)
    chosen = [m for m in measured if m.workload == spec]
    if not chosen:
        raise ValueError(f"no measured run of workload {fit_on!r} ({spec}) to fit the host "
                         f"factor on")
    return fit_host_factor(chosen), (f"fitted on the untimed host time of the {len(chosen)} "
                                     f"run(s) of `{spec}`; every other run validates it")


def ladder(measured: list[Measured], options: SimOptions) -> tuple[list[str], list[dict]]:
    """Output tok/s error of each run as the engine's terms are added one by one."""
    rows = ["| terms | " + " | ".join(f"`{m.workload}` {m.policy}" for m in measured) + " |",
            "|---|" + "---|" * len(measured)]
    table = []
    for name, change in LADDER:
        errors = [compare(m, replace(options, **change)).output_error for m in measured]
        rows.append(f"| {name} | " + " | ".join(f"{100 * e:+.1f}%" for e in errors) + " |")
        table.append(dict(terms=name, output_errors=errors))
    return rows, table


def _measured_on(source: dict) -> str:
    return (f"`{source['name']}` on {source.get('gpu', 'the GPU its JSON names')} "
            f"({source.get('date', 'date unknown')}, commit {source.get('commit', 'unknown')})")


def report(comparisons, sources: list[dict], factor: tuple[float, str], terms: list[str],
           env: dict, cells: list[str]) -> str:
    ok = sum(c.within_tolerance for c in comparisons)
    gpus = sorted({s.get("gpu", "unknown GPU") for s in sources})
    return "\n".join([
        f"# Simulator against measured engine runs (one GPU): {', '.join(gpus)}",
        "", f"Measured: {'; '.join(_measured_on(s) for s in sources)}. Simulated on the CPU "
        f"{env['date']} (UTC) at commit {env['commit']}: `pipedecode.sim` on the same workload "
        f"(spec, request count, seed), policy, limits and KV pool, one GPU of the named device "
        f"profile; the error is simulated / measured - 1. {ok} of {len(comparisons)} runs "
        f"within {TOLERANCE:.0%}.", "", markdown(comparisons),
        "## Phases (measured / simulated)", "",
        "prefill s and decode s: the engine's timed steps (runner call and sampling, "
        "GenerateStats); untimed s: the rest of elapsed s (the scheduler and postprocess).", "",
        phase_markdown(comparisons) or "(the measured runs hold no phases)", "",
        *(["## Every measured cell's prefill and decode time (simulated or not)", "",
            "In the order the benchmark ran them, the first right after the runner's warm-up "
            "(which prefilled 16-token prompts only). A prefill never interleaves: the same "
            "prompts should prefill alike in every cell of a workload.", "", *cells, ""]
          if cells else []),
        "## What each of the engine's terms adds (output tok/s error)", "", *terms, "",
        "## Terms and where their numbers come from", "",
        "- GPU time of every batch: the planner's cost model on the device profile "
        "(`pipedecode.planner.cost`, `pipedecode.profiles.latency`), unchanged.",
        "- Decode padding: a step runs the runner's CUDA graph of the smallest bucket holding "
        "the batch (`pipedecode.runtime.runner_plans.bucket_sizes`); padded rows hold one "
        "token of context (`runner_inputs`).",
        "- Sampling: the greedy sampler (`pipedecode.engine.sampler`) copies the bf16 logits "
        "[rows, vocab] to float32 and takes their argmax: 10 bytes per logit at the profile's "
        "HBM bandwidth, two launches.",
        "- Prefill launches: an eager prefill's host launches about 22 kernels per layer in "
        "19-31 ms for 32 layers whatever the batch (`prefill_overhead_h200.md`), so it is "
        f"priced at no less than {engine_costs.PREFILL_LAUNCH_US_PER_LAYER:g} us per layer "
        "(measured on the H200 machine, not fitted on these runs). Runs whose runner replays "
        "small prefills from CUDA graphs (up to 1024 tokens and 64 prompts; the runner's "
        "description says so) price those at their GPU time over the padded tokens instead.",
        "- Host time: the engine's loop is synchronous, so each step adds its host work, per "
        "sequence of the batch: scheduler, input staging, the sampler's Python, postprocess, at "
        "the rates of `engine_host_overhead_cpu.json` (a 2-core CPU; fitted through the origin) "
        f"times a host factor of {factor[0]:.3f}, {factor[1]}.",
        "- Not modelled (left to the cost model, `pipedecode.planner.cost`): the prefill's "
        "attention is priced at its roofline floor, its residual stream as bf16 and its RoPE "
        "as one fused pass (the prefill runs a float32 residual and RoPE in torch ops), and its "
        "GEMMs past the profile's 2048 tokens are extrapolated (held at the tensor cores' "
        "peak, not measured there); the decode step's own error against "
        "measured graph replays is `decode_step_h200.md`'s pred. err column. Where two "
        "policies' cells of one workload simulate alike but measure apart, the difference is "
        "the engine's run, not its scheduling.", ""])


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measured", nargs="+", help="JSON of the measured run(s), one file or "
                                                    "several")
    parser.add_argument("--out", default=None,
                        help="markdown to write (a .json of the same name beside it)")
    for name in OVERRIDABLE:
        parser.add_argument(f"--{name}", default=None, type=int if name in ("requests", "seed")
                            else str, help=f"{name} where the measured JSON does not say")
    parser.add_argument("--step-overhead-us", type=float, default=0.0,
                        help="controller CPU time per scheduling call to simulate (default 0)")
    parser.add_argument("--fit-host-on", default=None,
                        help="fit the host factor on this workload's runs (a, b, c or a spec)")
    parser.add_argument("--host-factor", type=float, default=None,
                        help="the host factor to simulate (default: the shipped one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    documents = []
    for path in args.measured:
        with open(path) as f:
            documents.append((path, json.load(f)))
    given = {n: getattr(args, n) for n in OVERRIDABLE if getattr(args, n) is not None}
    try:
        measured = [Measured.from_dict({**given, **run})
                    for _, data in documents for run in runs(data)]
        factor = host_factor(measured, args.fit_host_on, args.host_factor)
        options = SimOptions(step_overhead_us=args.step_overhead_us, host_factor=factor[0])
        comparisons = [compare(m, options) for m in measured]
        terms, term_rows = ladder(measured, options)
    except ValueError as exc:
        print(f"sim_vs_measured: {exc}", file=sys.stderr)
        return 2
    sources, cells = [], []
    for path, data in documents:
        source = {k: data.get(k) for k in ("gpu", "date", "commit")} \
            if isinstance(data, dict) else {}
        sources.append({k: v for k, v in source.items() if v} | {"name": os.path.basename(path)})
        found = every_cell(data)
        cells += ([f"`{sources[-1]['name']}`:", ""] + found + [""]) \
            if found and len(documents) > 1 else found
    env = record.environment("cpu")
    text = report(comparisons, sources, factor, terms, env, cells)
    if args.out:
        result = dict(env, measured_sources=sources, host_factor=factor[0],
                      host_factor_source=factor[1], tolerance=TOLERANCE, ladder=term_rows,
                      runs=[dict(measured=vars(c.measured), simulated=c.simulated.to_dict(),
                                 output_error=c.output_error, total_error=c.total_error,
                                 within_tolerance=c.within_tolerance) for c in comparisons])
        with Outputs() as outputs:
            outputs.write_text(args.out, text)
            outputs.write_text(os.path.splitext(args.out)[0] + ".json",
                               json.dumps(result, indent=1) + "\n")
            outputs.commit()
    print(text)
    return 0 if all(c.within_tolerance for c in comparisons) else 1


if __name__ == "__main__":
    sys.exit(main())
