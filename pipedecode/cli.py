"""The `pipedecode` command line: one subcommand per module in `pipedecode.commands`.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func(args) -> int`. Command modules import heavy libraries (torch, pulp, matplotlib)
inside `func`, so `pipedecode --help` stays fast. Errors pipedecode raises on purpose,
bad files and bad arguments print one line on stderr and exit 2 (a message of several lines
is joined into one); a traceback is a bug.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pipedecode.errors import PipedecodeError

COMMANDS = ("run", "generate", "analyze", "plan", "show", "profile", "bench", "simulate")

DESCRIPTION = """\
pipedecode makes LLM decoding faster on one GPU: it splits the batch into micro-batches
and runs one micro-batch's attention (memory-bound) on one partition of the SMs while
another's linear layers (compute-bound) run on the rest.

  pipedecode run                          the whole pipeline on a tiny preset, on this machine
  pipedecode run --model DIR              ... on a checkpoint's own weights, if they fit here
  pipedecode generate --model M --prompts in.jsonl --out out.jsonl     requests through the engine
  pipedecode analyze --model llama-3-8b   one table per layer kind: stages, FLOPs, bytes, bound
  pipedecode plan --model llama-3-8b --device h100 --batch 256 --context 1024 --out s.json
  pipedecode show s.json                  the plan as a table, a timeline PNG and a trace
  pipedecode profile --out h100.json      measure a device profile (needs a CUDA GPU)
  pipedecode bench                        decode-step benchmark (needs a CUDA GPU)
  pipedecode simulate --model llama-3-70b --gpus 8     TD-Pipe vs pipeline vs tensor, simulated
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
        print(f"pipedecode {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:   # a binary file where a text file (JSON, lengths) was due
        print(f"pipedecode {args.command}: error: an input file is not UTF-8 text "
              f"({exc.reason} at byte {exc.start}); pass the JSON or text file meant",
              file=sys.stderr)
        return 2
    except BrokenPipeError:         # `pipedecode analyze | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no flush error at exit
        return 0
    except KeyboardInterrupt:
        print(f"pipedecode {args.command}: interrupted", file=sys.stderr)
        return 130


def one_line(exc: BaseException) -> str:
    """An error's message as one line: its lines stripped and joined."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or \
        type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
