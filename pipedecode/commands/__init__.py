"""CLI subcommands, one module each: `register(subparsers)` adds a parser and its `func`."""
