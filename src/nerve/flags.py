"""Every environment knob nerve reads, in one table.

Read a flag with :func:`get`, never with ``os.environ`` directly, so that ``nerve flags``
(and this table) stays the complete list.

>>> from nerve import flags
>>> isinstance(flags.get("NERVE_THREADS"), str)
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Flag:
    name: str
    default: str
    doc: str


FLAGS: dict[str, Flag] = {
    f.name: f
    for f in (
        Flag("NERVE_CACHE_DIR", "~/.cache/nerve", "Where the on-disk program cache lives."),
        Flag("NERVE_CACHE", "1", "0 turns the program cache off (every compile runs the passes)."),
        Flag(
            "NERVE_CACHE_SIZE",
            "4G",
            "Size limit of the on-disk program cache (bytes; K/M/G suffixes); LRU eviction.",
        ),
        Flag("NERVE_THREADS", "0", "Threads per engine; 0 means one per available core."),
        Flag("NERVE_CC", "", "C compiler for the native engine; empty means cc, gcc, clang."),
        Flag("NERVE_LOG", "WARNING", "Log level of the 'nerve' logger (DEBUG shows copies)."),
        Flag(
            "NERVE_CHECK_KERNELS",
            "1",
            "1: check every kernel result's shape and dtype against the IR (cheap; keep on).",
        ),
    )
}


def get(name: str) -> str:
    """The flag's value from the environment, else its default."""
    try:
        flag = FLAGS[name]
    except KeyError:
        raise KeyError(f"unknown nerve flag {name!r}; known: {sorted(FLAGS)}") from None
    return os.environ.get(name, flag.default)


def get_int(name: str) -> int:
    """The flag as an integer (a non-integer value is a configuration error)."""
    raw = get(name)
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def get_bool(name: str) -> bool:
    """The flag as a boolean: 1/true/yes/on are true, anything else false."""
    return get(name).strip().lower() in {"1", "true", "yes", "on"}
