"""``nerve cache ls | stats | clear``: the on-disk program cache.

* ``ls`` — one line per entry, least recently used first: id, target, nerve version, size,
  when it was last used, and the start of its structural key;
* ``stats`` — where the cache lives, entries and bytes against the size limit;
* ``clear`` — remove every entry.

The cache lives under ``$NERVE_CACHE_DIR/programs`` (``--dir`` overrides the directory).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from nerve.cli import _output as out
from nerve.runtime.cache import ProgramCache


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cache",
        help="list, measure or clear the on-disk program cache",
        description="The program cache keeps compiled plans (no weights) by structural key "
        "under $NERVE_CACHE_DIR/programs, so a structure is compiled once.",
    )
    parser.add_argument("action", choices=["ls", "stats", "clear"], help="what to do")
    parser.add_argument("--dir", default=None,
                        help="cache directory (default $NERVE_CACHE_DIR, ~/.cache/nerve)")
    parser.add_argument("--json", action="store_true", help="print JSON (ls, stats)")
    return parser


def _age(seconds: float) -> str:
    ago = max(0.0, time.time() - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if ago >= size:
            return f"{ago / size:.0f} {unit} ago"
    return f"{ago:.0f} s ago"


def run(args: argparse.Namespace) -> int:
    cache = ProgramCache(args.dir)
    if args.action == "ls":
        entries = cache.entries()
        if args.json:
            out.emit(json.dumps([
                {"id": e.id, "key": e.key, "target": e.target, "nerve": e.nerve,
                 "bytes": e.bytes, "created": e.created, "last_used": e.last_used,
                 "complete": e.complete}
                for e in entries
            ], indent=2))
            return 0
        if not entries:
            out.emit(f"the program cache at {cache.root} is empty")
            return 0
        table = out.Table("entry", "target", "nerve", "size", "last used", "key",
                          align="lllrll")
        for e in entries:
            table.add_row(e.id[:12], e.target or "?", e.nerve or "?", out.fmt_bytes(e.bytes),
                          _age(e.last_used), e.key[:16] if e.complete else "(incomplete)")
        out.emit_table(table)
        return 0
    if args.action == "stats":
        summary = cache.summary()
        if args.json:
            out.emit(json.dumps(summary, indent=2))
            return 0
        out.emit(f"program cache: {summary['root']}")
        out.emit(f"  entries: {summary['entries']} ({summary['incomplete']} incomplete)")
        out.emit(f"  size:    {out.fmt_bytes(summary['bytes'])} of "
                 f"{out.fmt_bytes(summary['limit_bytes'])} (NERVE_CACHE_SIZE)")
        return 0
    removed, freed = cache.clear()
    out.emit(f"removed {removed} entries ({out.fmt_bytes(freed)}) from {cache.root}")
    return 0
