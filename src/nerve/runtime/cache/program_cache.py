"""The ProgramCache facade: the memory level in front of the disk level, and the protocol
:func:`nerve.compile` follows (claim, lookup, prepare, store)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nerve import flags
from nerve.compiler.plan import Plan
from nerve.errors import NerveError

from .disk import BadEntry, DiskStore, FileLock
from .entry import ARTIFACTS, MANIFEST, EntryInfo, entry_id, warn
from .memory import MemoryLRU
from .plans import plan_nbytes, strip_weights

DEFAULT_MEMORY_BYTES = 256 << 20
LOCK_TIMEOUT_S = 600.0


def parse_size(text: str) -> int:
    """``"4G"`` -> 4294967296; plain numbers are bytes.

    >>> parse_size("512M"), parse_size("1024")
    (536870912, 1024)
    """
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(raw[-1:], 1)
    number = raw[:-1] if scale > 1 else raw
    try:
        return int(float(number) * scale)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with K/M/G/T)") from None


@dataclass
class CacheStats:
    """What this cache object did in this process."""

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    stores: int = 0
    discarded: int = 0
    evicted: int = 0

    @property
    def hits(self) -> int:
        return self.memory_hits + self.disk_hits


class ProgramCache:
    """Compiled Plans by structural key, in memory and on disk (see the package docstring).

    ``root`` defaults to ``$NERVE_CACHE_DIR``; entries live under ``root/programs``.
    ``disk=False`` keeps the memory level only.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        disk_bytes: int | None = None,
        disk: bool = True,
        lock_timeout: float = LOCK_TIMEOUT_S,
    ) -> None:
        base = Path(os.path.expanduser(str(root or flags.get("NERVE_CACHE_DIR"))))
        self.root = base / "programs"
        self.disk = disk
        self.disk_bytes = disk_bytes if disk_bytes is not None else parse_size(
            flags.get("NERVE_CACHE_SIZE"))
        self.lock_timeout = lock_timeout
        self.stats = CacheStats()
        self._memory = MemoryLRU(memory_bytes)
        self._disk = DiskStore(self.root)
        self._lock = threading.RLock()

    @property
    def memory_bytes(self) -> int:
        """The bound of the memory level."""
        return self._memory.limit

    @memory_bytes.setter
    def memory_bytes(self, limit: int) -> None:
        self._memory.limit = limit

    # ---- naming -------------------------------------------------------------------------

    def entry_id(self, key: str) -> str:
        """The directory name of ``key``'s entry (the key and the compiler's fingerprint)."""
        return entry_id(key)

    def entry_dir(self, key: str) -> Path:
        return self._disk.entry_dir(key)

    def artifact_dir(self, key: str) -> Path | None:
        """Where engines keep build artifacts for ``key`` (created; None without a disk)."""
        if not self.disk:
            return None
        path = self.entry_dir(key) / ARTIFACTS
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            warn(f"cannot create the cache directory {path}: {exc}")
            return None
        return path

    # ---- the protocol compile() follows ---------------------------------------------------

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[None]:
        """Hold ``key`` exclusively (threads and processes) for a lookup-compile-store."""
        if not self.disk:
            yield
            return
        with FileLock(self._disk.lock_path(self.entry_id(key)), self.lock_timeout):
            yield

    def lookup(self, key: str) -> Plan | None:
        """The cached Plan for ``key`` (without weights), or None. Counts a hit or a miss."""
        eid = self.entry_id(key)
        with self._lock:
            found = self._memory.get(eid)
            if found is not None:
                self.stats.memory_hits += 1
                return found
        plan = self._read_entry(key) if self.disk else None
        with self._lock:
            if plan is None:
                self.stats.misses += 1
                return None
            self.stats.disk_hits += 1
        self._remember(eid, plan, None)
        return plan

    def prepare(self, key: str) -> None:
        """Clear what an unfinished compile of ``key`` left on disk (call after a miss)."""
        if self.disk:
            directory = self.entry_dir(key)
            if directory.exists() and not (directory / MANIFEST).exists():
                self._disk.remove(directory)

    def store(self, plan: Plan, key: str | None = None) -> None:
        """Keep ``plan`` (its structure; weights are never stored) under ``key``.

        Errors writing the disk entry are warnings: a cache never fails a compile.
        """
        key = key or plan.key
        struct = strip_weights(plan)
        size = None
        if self.disk:
            try:
                size = self._write_entry(key, struct)
            except (OSError, NerveError, ValueError, TypeError) as exc:
                warn(f"program cache: could not store the entry for {key[:12]}: {exc}")
                self._disk.remove(self.entry_dir(key))
        self._remember(self.entry_id(key), struct, size)
        with self._lock:
            self.stats.stores += 1

    def _remember(self, eid: str, plan: Plan, size: int | None) -> None:
        nbytes = size if size is not None else plan_nbytes(plan)
        with self._lock:
            self._memory.put(eid, plan, nbytes)

    def forget(self) -> None:
        """Empty the memory level (the disk level stays)."""
        with self._lock:
            self._memory.clear()

    # ---- disk level -----------------------------------------------------------------------

    def _write_entry(self, key: str, plan: Plan) -> int:
        total = self._disk.write(key, plan)
        if self._disk.add_usage(total, self.disk_bytes):
            self.evict()
        return total

    def _read_entry(self, key: str) -> Plan | None:
        try:
            return self._disk.read(key)
        except BadEntry as bad:
            self._discard(bad.directory, str(bad))
            return None

    def _discard(self, directory: Path, why: str) -> None:
        """Remove a bad entry with a warning (the lookup counts as a miss)."""
        warn(f"program cache: discarding entry {directory.name[:12]}: {why}; it will be "
             "rebuilt")
        with self._lock:
            self.stats.discarded += 1
        self._disk.remove(directory)

    # ---- listing, size limit --------------------------------------------------------------

    def entries(self) -> list[EntryInfo]:
        """Every entry on disk, least recently used first."""
        return self._disk.scan()

    def disk_usage(self) -> int:
        return sum(e.bytes for e in self.entries())

    def evict(self, limit: int | None = None) -> int:
        """Remove least recently used entries until the disk level fits ``limit`` bytes
        (default: the size limit). Entries another process holds locked are skipped."""
        limit = self.disk_bytes if limit is None else limit
        entries = self.entries()
        total = sum(e.bytes for e in entries)
        removed = 0
        for entry in entries:
            if total <= limit:
                break
            if self._disk.remove_unless_locked(entry):
                total -= entry.bytes
                removed += 1
        self._disk.write_usage(total, time.time())
        with self._lock:
            self.stats.evicted += removed
            for eid in [e.id for e in entries if not e.path.exists()]:
                self._memory.drop(eid)
        return removed

    def clear(self) -> tuple[int, int]:
        """Remove every entry (memory and disk); returns (entries, bytes) removed."""
        entries = self.entries()
        for entry in entries:
            self._disk.remove(entry.path)
        self._disk.empty_trash()
        self.forget()
        self._disk.write_usage(0, time.time())
        return len(entries), sum(e.bytes for e in entries)

    def summary(self) -> dict[str, Any]:
        """Counts for ``nerve cache stats``: the disk level and this process's activity."""
        entries = self.entries()
        with self._lock:
            return {
                "root": str(self.root),
                "entries": len(entries),
                "bytes": sum(e.bytes for e in entries),
                "limit_bytes": self.disk_bytes,
                "incomplete": sum(1 for e in entries if not e.complete),
                "memory_entries": len(self._memory),
                "memory_bytes": self._memory.used,
                **dataclasses.asdict(self.stats),
            }
