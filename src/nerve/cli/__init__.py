"""The ``nerve`` command. One module per subcommand, each with ``register`` and ``run``.

A subcommand module defines ``register(subparsers) -> argparse.ArgumentParser`` (adding its
parser, named like the module) and ``run(args) -> int`` (the exit status). Errors nerve raises
on purpose (NerveError) print one clear line and exit 2; violations found by ``check`` exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from nerve._version import __version__
from nerve.errors import NerveError

# Subcommand modules under nerve.cli, in the order `nerve --help` lists them.
SUBCOMMANDS = ["show", "run", "compile", "check", "demo", "worker", "bench", "cache"]


def _available() -> list[str]:
    found = []
    for name in SUBCOMMANDS:
        try:
            importlib.import_module(f"nerve.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"nerve.cli.{name}":
                continue  # not written yet
            raise
        found.append(name)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nerve", description="nerve — a neural engine runtime for Python"
    )
    parser.add_argument("--version", action="version", version=f"nerve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _available():
        module = importlib.import_module(f"nerve.cli.{name}")
        sp = module.register(sub)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args))
    except NerveError as exc:
        print(f"nerve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
