"""`pipedecode bench`: the decode-step benchmark (benchmarks/decode_step.py) on this GPU.

Thin wrapper: finds the benchmark script in the source checkout and passes the options through.
Knows nothing of how the benchmark measures.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

from pipedecode.errors import PipedecodeError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="decode-step benchmark: transformers vs pipedecode (needs a CUDA GPU)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for JSON + markdown")
    parser.add_argument("--models", default="llama-3-8b,llama-2-7b")
    parser.add_argument("--points", default="", help="only these, e.g. 64x512,256x1024,mixed")
    parser.add_argument("--splits", default="32,48,64", help="memory-partition SM counts to try")
    parser.add_argument("--schedules", default=None, help="folder of planner schedule JSONs")
    parser.add_argument("--hf-eager", action="store_true", help="also time transformers eager")
    parser.add_argument("--compile-points", default="", help="e.g. llama-3-8b:64x1024")
    parser.add_argument("--tag", default="")
    parser.add_argument("--triton-seq", action="store_true",
                        help="also time sequential with the Triton matmul (diagnostic)")
    parser.set_defaults(func=_run)


def _script() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "benchmarks", "decode_step.py")
    if not os.path.exists(path):
        raise PipedecodeError("benchmarks/decode_step.py is not installed with the package; run "
                              "`pipedecode bench` from a source checkout of pipedecode")
    return path


def _run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        raise PipedecodeError("pipedecode bench needs a CUDA GPU; none is visible here")
    spec = importlib.util.spec_from_file_location("pipedecode_decode_step", _script())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--out", args.out, "--models", args.models, "--splits", args.splits,
            "--points", args.points, "--compile-points", args.compile_points, "--tag", args.tag]
    if args.schedules:
        argv += ["--schedules", args.schedules]
    if args.hf_eager:
        argv.append("--hf-eager")
    if args.triton_seq:
        argv.append("--triton-seq")
    return module.main(argv)
