"""The ``rerank`` command line: a dispatcher over the commands registered in
:data:`rerank.commands.COMMANDS` (one module each in :mod:`rerank.commands`, or from another
package through the ``rerank.commands`` entry-point group)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rerank.commands import COMMANDS
from rerank.errors import RerankError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``rerank`` command: one subparser per registered command."""
    parser = argparse.ArgumentParser(prog="rerank", description="Neural passage re-ranking: index, retrieve, re-rank, "
                                                                "evaluate, train, serve.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.description)
        command.arguments(p)
        if command.run is not None:
            p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rerank`` console script."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if getattr(args, "score_cache", None):  # one absolute path, whatever folder a worker runs in
        args.score_cache = str(Path(args.score_cache).expanduser().resolve())
    try:
        return args.func(args)
    except (RerankError, ValueError, KeyError) as exc:
        print(f"rerank {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
