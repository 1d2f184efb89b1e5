"""Argument blocks that several `dsv4` subcommands share, declared once.

`command_group` is the `dsv4 <group> <action>` pattern (data, eval, model, tasks, train):
the group parser remembers itself as `_parser` so that `dsv4 <group>` alone prints the
group's help (cli/__init__.main). `add_sampling_args` is the sampling knobs of the
commands that decode from a checkpoint (generate, chat).
"""

from __future__ import annotations

import argparse


def command_group(
    sub: argparse._SubParsersAction, name: str, help: str, metavar: str
) -> argparse._SubParsersAction:
    """Add `dsv4 <name>` with its own subcommands (dest `<name>_command`); returns their subparsers."""
    p = sub.add_parser(name, help=help)
    p.set_defaults(_parser=p)
    return p.add_subparsers(dest=f"{name}_command", metavar=metavar)


def add_sampling_args(p: argparse.ArgumentParser, temperature: float) -> None:
    """--temperature / --top-p / --top-k / --seed, as SamplingParams takes them."""
    p.add_argument("--temperature", type=float, default=temperature, help=f"0 = greedy ({temperature})")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--seed", type=int, default=None, help="fix the sampling randomness")
