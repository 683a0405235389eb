"""`pipedecode bench`: the decode-step benchmark (benchmarks/decode_step.py) on this GPU.

Thin wrapper: finds the benchmark script in the source checkout and passes on the options given
(the script owns their defaults; its diagnostics are `python benchmarks/decode_step.py --help`).
Knows nothing of how the benchmark measures.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from pipedecode.errors import PipedecodeError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="decode-step benchmark: transformers vs pipedecode (needs a CUDA GPU)",
        description="Runs benchmarks/decode_step.py; writes decode_step_<gpu>.json and .md. "
                    "Options not given take the script's defaults.")
    for option, help_text in _OPTIONS.items():
        parser.add_argument(option, default=None, help=help_text)
    for flag, help_text in _FLAGS.items():
        parser.add_argument(flag, action="store_true", help=help_text)
    parser.set_defaults(func=_run)


_OPTIONS = {"--out": "folder for the JSON and markdown (default benchmarks/results)",
            "--models": "e.g. llama-3-8b,llama-2-7b", "--points": "e.g. 64x512,256x1024,mixed",
            "--splits": "memory-partition SM counts to try, e.g. 40,48,64",
            "--schedules": "folder of planner schedule JSONs (benchmarks/plan_grid.py)",
            "--compile-points": "transformers StaticCache+compile points, e.g. llama-3-8b:64x1024"}
_FLAGS = {"--hf-eager": "also time transformers eager",
          "--triton-seq": "also time sequential with the Triton matmul (diagnostic)"}


def _argv(args: argparse.Namespace) -> list[str]:
    """The options given, in the script's spelling."""
    argv = []
    for option in _OPTIONS:
        value = getattr(args, option[2:].replace("-", "_"))
        argv += [option, value] if value is not None else []
    return argv + [flag for flag in _FLAGS if getattr(args, flag[2:].replace("-", "_"))]


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
    path = _script()
    sys.path.insert(0, os.path.dirname(path))      # the script imports its sibling modules
    spec = importlib.util.spec_from_file_location("decode_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(_argv(args))
