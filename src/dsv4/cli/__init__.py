"""The `dsv4` command line: thin subcommands over functions that tests call directly.

Each concern registers its own subcommands in a module of this package (`data.py`,
`train.py`, ...), with argparse only, and imports its heavy code inside the handler, so
that `dsv4 --help` is instant. A `UserError` anywhere becomes a one-line message and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dsv4 import __version__
from dsv4.errors import UserError

# Modules that each define `register(subparsers)`, in the order `dsv4 --help` lists them
# (the order of the recipe). Add a line for a new concern.
COMMAND_MODULES = [
    "dsv4.cli.quickstart",
    "dsv4.cli.data",
    "dsv4.cli.train",
    "dsv4.cli.generate",
    "dsv4.cli.chat",
    "dsv4.cli.serve",
    "dsv4.cli.eval",
    "dsv4.cli.posttrain",  # `dsv4 report` (and the sft/rl/distill stages under `train`)
    "dsv4.cli.tasks",
    "dsv4.cli.model",
    "dsv4.cli.convert",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsv4",
        description="DeepSeek-V4, open and end to end: data, model, training, evaluation, serving.",
    )
    parser.add_argument("--version", action="version", version=f"dsv4 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # `dsv4` or `dsv4 train` alone: show the relevant help.
        (getattr(args, "_parser", None) or parser).print_help()
        return 2
    try:
        rc = int(func(args) or 0)
    except UserError as e:
        print(f"dsv4: error: {e}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        print("dsv4: interrupted", file=sys.stderr)
        rc = 130
    if "dsv4.train.distributed" in sys.modules:  # only a training command can have joined a group
        from dsv4.train.distributed import end_worker

        end_worker(rc)  # returns unless this is a torchrun worker
    return rc


if __name__ == "__main__":
    sys.exit(main())
