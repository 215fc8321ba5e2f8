"""The ``rerank`` commands: each is one module of this package that registers a :class:`Command`
(its name, one-line help, description, flags and function) in :data:`COMMANDS`, and
:mod:`rerank.cli` only dispatches. Another package adds a command through the ``rerank.commands``
entry-point group (a module that calls :func:`register_command`), and ``rerank --help`` lists it."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from rerank.registry import Registry


@dataclass(frozen=True)
class Command:
    """One ``rerank`` command."""

    name: str
    help: str
    """The line ``rerank --help`` shows (a literal ``%`` is written ``%%``, as argparse wants)."""
    arguments: Callable[[argparse.ArgumentParser], None]
    """Adds the command's flags (and any subcommands) to its parser."""
    run: Callable[[argparse.Namespace], int] | None
    """The command's function (its exit status); None for a command made of subcommands, each of
    which sets its own ``func``."""
    description: str | None = None


COMMANDS: Registry[Command] = Registry("command", "commands", packages=("rerank.commands",))
"""Every ``rerank`` command by name."""


def register_command(command: Command) -> Command:
    """Add ``command`` to :data:`COMMANDS` under its own name."""
    return COMMANDS.add(command.name, command)
