"""The `pipedecode` command line: one subcommand per module in `pipedecode.commands`.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func(args) -> int`. Command modules import heavy libraries (torch, pulp, matplotlib)
inside `func`, so `pipedecode --help` stays fast. Errors pipedecode raises on purpose,
bad files and bad arguments print one line and exit 2; a traceback is a bug.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pipedecode.errors import PipedecodeError

COMMANDS = ("run", "generate", "analyze", "plan", "show", "profile", "bench")

DESCRIPTION = """\
pipedecode makes LLM decoding faster on one GPU: it splits the batch into micro-batches
and runs one micro-batch's attention (memory-bound) on one partition of the SMs while
another's linear layers (compute-bound) run on the rest.

  pipedecode run                          the whole pipeline on a tiny preset, on this machine
  pipedecode generate --model M --prompts in.jsonl --out out.jsonl     requests through the engine
  pipedecode analyze --model llama-3-8b   per-layer compute/memory stages with FLOPs and bytes
  pipedecode plan --model llama-3-8b --device h100 --batch 256 --context 1024 --out s.json
  pipedecode show s.json                  the plan as a table, a timeline PNG and a trace
  pipedecode profile --out h100.json      measure a device profile (needs a CUDA GPU)
  pipedecode bench                        decode-step benchmark (needs a CUDA GPU)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipedecode", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pipedecode.commands.{name}").register(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pipedecode")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()              # a closed pipe shows up here, inside the handler
        return code
    except (PipedecodeError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"pipedecode {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:         # `pipedecode analyze | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no flush error at exit
        return 0
    except KeyboardInterrupt:
        print(f"pipedecode {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
