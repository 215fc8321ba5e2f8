"""A command from outside rerank: ``rerank plugin-hello [--name NAME]``."""
from __future__ import annotations

import argparse

from rerank.commands import Command, register_command


def arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    p.add_argument("--name", default="world", help="who to greet")


def run(args: argparse.Namespace) -> int:
    """Print a greeting."""
    print(f"hello, {args.name}, from a plugin")
    return 0


register_command(Command("plugin-hello", "greet from a plugin package (rerank's tests)", arguments, run))
