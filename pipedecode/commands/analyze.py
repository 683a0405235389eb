"""`pipedecode analyze`: the per-layer compute/memory stages of a model's decode step.

Builds the model on the meta device (real shapes, no weights downloaded), captures one decode
step, classifies it for a device profile and prints one table per decoder-layer kind (its
stages with FLOPs, bytes moved, arithmetic intensity and bound) plus the prologue and the head;
`--nodes` adds every node, `--json` writes the whole report (written only on success).
"""

from __future__ import annotations

import argparse
import json

from pipedecode.commands.common import Outputs
from pipedecode.models import DEFAULT_PRESET, PRESETS

DEFAULT_CONTEXT = 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze", help="per-layer compute/memory stages with FLOPs, bytes and intensity",
        description="Capture a decode step and print its compute- and memory-bound stages.")
    parser.add_argument("--model", default=DEFAULT_PRESET,
                        help=f"preset ({', '.join(PRESETS)}), local directory or hub id")
    parser.add_argument("--device", default="h100",
                        help="device profile name (h100, h200, a100, rtx4090) or JSON path")
    parser.add_argument("--batch", type=int, default=1, help="sequences per decode step")
    parser.add_argument("--context", type=int, default=None,
                        help="tokens in the KV cache after the step (live context length; "
                             f"default {DEFAULT_CONTEXT}, or the model's positions if fewer)")
    parser.add_argument("--phase", default="decode", choices=("decode", "prefill"),
                        help="decode: one new token per sequence; prefill: a --context prompt")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON here")
    parser.add_argument("--nodes", action="store_true",
                        help="also list every node of every stage, with its module path")
    parser.add_argument("--all-nodes", action="store_true",
                        help="--nodes, with free layout ops (views, transposes) too")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pipedecode.backend import resolve_device
    from pipedecode.passes.report import analyze_model, format_table

    from tqdm import tqdm

    device = resolve_device(args.device)
    if args.context is None:
        from pipedecode.models import max_positions

        args.context = min(DEFAULT_CONTEXT, max_positions(args.model) or DEFAULT_CONTEXT)
    steps = ("build", "capture", "classify", "partition")
    with Outputs() as outputs:
        json_path = outputs.path(args.json) if args.json else None
        with tqdm(total=len(steps), desc=f"analyze {args.model}", unit="step", leave=False,
                  disable=None) as bar:        # disable=None: no bar when stderr is no terminal
            def progress(step: str) -> None:
                bar.set_postfix_str(step)
                bar.update(steps.index(step) + 1 - bar.n)

            report = analyze_model(args.model, device, batch_size=args.batch,
                                   context_len=args.context, dtype=args.dtype,
                                   phase=args.phase, progress=progress)
        if json_path:
            with open(json_path, "w") as handle:
                json.dump(report, handle, indent=1)
        outputs.commit()
    print(format_table(report, nodes=args.nodes, all_nodes=args.all_nodes))
    if not (args.nodes or args.all_nodes):
        print("(--nodes lists every node of every stage)")
    if args.json:
        print(f"wrote {args.json}")
    return 0
