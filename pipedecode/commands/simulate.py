"""`pipedecode simulate`: the engine's scheduling over N GPUs, simulated; a table, JSON, a plot.

Owns parsing the sweep's options, printing one line per point and writing the files --out
names (by extension: .json, .md, .png), each only once every point has been simulated.
Knows nothing of how a point is simulated: it calls `pipedecode.sim.sweep.run_sweep`.
"""

from __future__ import annotations

import argparse
import os

from pipedecode.errors import InsufficientMemoryError, PipedecodeError

OUT_KINDS = (".json", ".md", ".png")

EPILOG = """\
strategies:
  tdpipe    TD-Pipe: N pipeline stages, one micro-batch per stage in flight, the temporal
            policy (prefill and decode disaggregated in time, greedy prefill on predicted
            lengths, work stealing, the decode-to-prefill switch by the intensity rule with
            the pipeline's bubble)
  pipeline  plain pipeline parallelism: the same stages, the prefill-first policy
  tensor    an analytic tensor-parallel estimate: each step / N plus two ring all-reduces
            per layer over the link
More GPUs than a replica can use become data-parallel replicas (Llama-3-8B: 32 layers, so
64 GPUs are 2 pipelines of 32 stages). Every number is simulated from the device profile,
the cost model and the link model's ASSUMED bandwidths and latencies.

examples:
  pipedecode simulate --model llama-3-70b --gpus 8 --link pcie5
  pipedecode simulate --model llama-3-8b --model llama-3-70b --requests 4096 --jobs 2 \\
      --out sim.json --out sim.md --out sim.png
  pipedecode simulate --model llama-3-8b --gpus 1 --strategy tdpipe --workload fixed:512:128"""


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("expected at least one GPU count")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipedecode.sim.links import LINKS
    from pipedecode.sim.strategies import STRATEGIES
    from pipedecode.sim.workloads import WORKLOAD_HELP

    parser = subparsers.add_parser(
        "simulate", help="simulate TD-Pipe, plain pipeline and tensor parallelism on N GPUs",
        description="Simulate an offline batch of requests on 1 to 64 GPUs: the engine's own "
                    "scheduler and policies on a virtual clock, every GPU time from the cost "
                    "model on a device profile, transfers from a link model. Prints output "
                    "and total tokens/s, the bubble fraction, phase switches and preemptions "
                    "per (model, GPUs, link, strategy). Pure CPU work.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None,
                        help="preset name (repeat for several; default llama-3-8b and "
                             "llama-3-70b)")
    parser.add_argument("--device", default="h200",
                        help="device profile name or JSON file (default h200, measured)")
    parser.add_argument("--link", action="append", choices=sorted(LINKS), default=None,
                        help="link between GPUs (repeat for several; default both)")
    parser.add_argument("--gpus", type=_csv_ints, default=(1, 2, 4, 8, 16, 32, 64),
                        help="GPU counts, comma-separated (default 1,2,4,8,16,32,64)")
    parser.add_argument("--strategy", action="append", choices=STRATEGIES, default=None,
                        help="strategy (repeat for several; default all three)")
    parser.add_argument("--workload", default="sharegpt", help=f"workload: {WORKLOAD_HELP}")
    parser.add_argument("--requests", type=int, default=1000,
                        help="requests per point (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workload (default 0)")
    parser.add_argument("--seqs-per-gpu", type=int, default=256,
                        help="max_num_seqs per GPU of a replica (default 256)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192,
                        help="most prompt tokens in one prefill batch (default 8192)")
    parser.add_argument("--micro-batches", type=int, default=None,
                        help="micro-batches in flight in a pipeline (default: one per stage)")
    parser.add_argument("--predictor", choices=("online", "oracle"), default="online",
                        help="output lengths the scheduler predicts: the engine's online "
                             "estimator (default) or exact (ignore_eos)")
    parser.add_argument("--step-overhead-us", type=float, default=0.0,
                        help="controller CPU time per scheduling call in microseconds, on the "
                             "critical path (default 0: scheduling hidden behind the GPUs)")
    parser.add_argument("--no-prefill-launch", dest="prefill_launch", action="store_false",
                        help="price a prefill at its GPU time alone, as if its kernel launches "
                             "were hidden (CUDA graphs); by default it lasts at least their "
                             "measured host time, which bounds small prefills")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes simulating points at once (default 1)")
    parser.add_argument("--out", action="append", default=[], metavar="PATH",
                        help="write the results to PATH by its extension: .json (every "
                             "number and assumption), .md (the table with its assumptions) "
                             "or .png (throughput against GPUs); repeat for several")
    parser.set_defaults(func=_run)


def _spec(args: argparse.Namespace):
    from pipedecode.sim.strategies import STRATEGIES, SimOptions
    from pipedecode.sim.sweep import SweepSpec

    for name in ("requests", "seqs_per_gpu", "max_num_batched_tokens", "jobs"):
        if getattr(args, name) < 1:
            raise PipedecodeError(f"--{name.replace('_', '-')} must be positive, "
                                  f"got {getattr(args, name)}")
    try:
        options = SimOptions(seqs_per_gpu=args.seqs_per_gpu,
                             max_num_batched_tokens=args.max_num_batched_tokens,
                             micro_batches=args.micro_batches, predictor=args.predictor,
                             step_overhead_us=args.step_overhead_us,
                             prefill_launch=args.prefill_launch)
        return SweepSpec(models=tuple(args.model or ("llama-3-8b", "llama-3-70b")),
                         device=args.device, links=tuple(args.link or ("pcie5", "nvlink4")),
                         strategies=tuple(args.strategy or STRATEGIES), gpus=args.gpus,
                         workload=args.workload, requests=args.requests, seed=args.seed,
                         options=options)
    except ValueError as exc:
        raise PipedecodeError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    from pipedecode.commands.common import Outputs
    from pipedecode.sim import report
    from pipedecode.sim.sweep import run_sweep

    bad = [p for p in args.out if os.path.splitext(p)[1].lower() not in OUT_KINDS]
    if bad:
        raise PipedecodeError(f"--out {bad[0]}: name a .json, .md or .png file")
    spec = _spec(args)
    with Outputs() as outputs:
        staged = [(path, outputs.path(path)) for path in args.out]
        try:
            result = run_sweep(spec, jobs=args.jobs)
        except ValueError as exc:
            raise PipedecodeError(str(exc)) from None
        if not result.points:
            raise InsufficientMemoryError(result.skipped[0]["reason"])
        for path, temp in staged:
            kind = os.path.splitext(path)[1].lower()
            if kind == ".png":
                report.plot(result, temp)
            else:
                text = result.to_json() if kind == ".json" else \
                    report.markdown(result, plot_name=_beside(path, args.out))
                with open(temp, "w") as f:
                    f.write(text)
        outputs.commit()
    print(table(result))
    for path in args.out:
        print(f"wrote {path}")
    return 0


def _beside(markdown_path: str, outs: list[str]) -> str | None:
    """The name of a PNG written to the markdown's folder, to link from it."""
    folder = os.path.dirname(os.path.abspath(markdown_path))
    pngs = [p for p in outs if p.lower().endswith(".png")
            and os.path.dirname(os.path.abspath(p)) == folder]
    return os.path.basename(pngs[0]) if pngs else None


def table(result) -> str:
    """One line per point; the points not simulated, with why."""
    lines = [f"{'model':<12} {'GPUs':>4} {'link':<8} {'strategy':<9} {'layout':<12} "
             f"{'out tok/s':>10} {'total tok/s':>11} {'loaded out':>10} {'bubble':>6} "
             f"{'switches':>8} {'preempt':>7}"]
    for p in result.points:
        layout = f"{p.replicas}x{p.per_replica}" + ("tp" if p.strategy == "tensor" else "pp")
        loaded = "-" if p.loaded_output_tokens_per_s is None else \
            f"{p.loaded_output_tokens_per_s:.0f}"
        lines.append(f"{p.model:<12} {p.gpus:>4} {p.link:<8} {p.strategy:<9} {layout:<12} "
                     f"{p.output_tokens_per_s:>10.0f} {p.total_tokens_per_s:>11.0f} "
                     f"{loaded:>10} {p.bubble_fraction:>6.2f} {p.switches:>8} "
                     f"{p.preemptions:>7}")
    for k in result.skipped:
        lines.append(f"not simulated: {k['model']} on {k['gpus']} GPU(s), {k['strategy']}: "
                     f"{k['reason']}")
    lines.append(f"simulated (not measured) on the CPU in {result.elapsed_s:.1f} s; link "
                 f"numbers and tensor parallelism are estimates (see --out .md)")
    return "\n".join(lines)
