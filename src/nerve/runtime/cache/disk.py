"""The disk level: entry directories under ``root``, per-key file locks, removal, usage.

Every read checks the whole entry (manifest identity, file hashes, the decoded plan's key);
a bad entry raises :class:`BadEntry` so the caller can count and discard it. Removal renames
an entry aside first, so a reader never sees it half deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nerve.compiler.plan import Plan
from nerve.errors import NerveError

from .entry import (
    MANIFEST,
    PLAN_FILE,
    EntryInfo,
    content_hash,
    entry_id,
    entry_info,
    foreign,
    hash_files,
    make_manifest,
    sha256,
    warn,
    write_atomic,
)

try:
    import fcntl
except ImportError:  # not POSIX: locks are per process only
    fcntl = None  # type: ignore[assignment]

USAGE = "usage.json"  # running total of the disk level, so stores need no directory scan
RESCAN_S = 3600.0  # rescan (and evict) at least this often
LOCKS = "locks"


class BadEntry(Exception):
    """An entry that must not be served; the message says why."""

    def __init__(self, directory: Path, why: str) -> None:
        super().__init__(why)
        self.directory = directory


class FileLock:
    """An exclusive ``flock`` on ``path``, polled so a wait is bounded by ``timeout``."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            return self
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    warn(f"waited {self.timeout:.0f} s for the cache lock {self.path}; "
                         "compiling without it")
                    return self
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class DiskStore:
    """The entry directories under ``root`` (see the package docstring for the format)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha

    def entry_dir(self, key: str) -> Path:
        return self.root / entry_id(key)

    def lock_path(self, eid: str) -> Path:
        return self.root / LOCKS / f"{eid}.lock"

    # ---- one entry -------------------------------------------------------------------------

    def write(self, key: str, plan: Plan) -> int:
        """Write ``plan`` and commit it with its manifest; returns the entry's size."""
        from nerve.runtime.serialize import plan_to_bytes

        directory = self.entry_dir(key)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / PLAN_FILE, plan_to_bytes(plan))
        files, total = hash_files(directory)
        manifest = make_manifest(key, plan.target, files, total)
        write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1).encode())
        return total

    def read(self, key: str) -> Plan | None:
        """The plan of ``key``'s committed entry, or None; raises BadEntry for a bad one."""
        from nerve.runtime.serialize import plan_from_bytes

        directory = self.entry_dir(key)
        if not directory.is_dir():
            return None
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            return None  # a compile in progress elsewhere died; prepare() clears it
        try:
            manifest = json.loads(manifest_path.read_text())
            if not isinstance(manifest, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as exc:
            raise BadEntry(directory, f"its manifest is garbled ({exc})") from None
        why = foreign(manifest, key)
        if why:
            raise BadEntry(directory, f"it is foreign: {why}")
        why = self._check_files(directory, manifest)
        if why:
            raise BadEntry(directory, why)
        try:
            plan = plan_from_bytes((directory / PLAN_FILE).read_bytes(), str(directory))
        except (OSError, NerveError, ValueError, KeyError, TypeError) as exc:
            raise BadEntry(directory, f"its plan cannot be decoded ({exc})") from None
        if plan.key != key:
            raise BadEntry(directory, "its plan has another structural key")
        with contextlib.suppress(OSError):
            os.utime(manifest_path)  # least recently used = oldest manifest mtime
        return plan

    def _check_files(self, directory: Path, manifest: Mapping[str, Any]) -> str | None:
        files = manifest.get("files")
        if not isinstance(files, dict) or PLAN_FILE not in files:
            return "its manifest lists no plan"
        if manifest.get("content_hash") != content_hash(files):
            return "its manifest's file table does not match its content hash"
        for rel, digest in files.items():
            path = directory / rel
            try:
                st = path.stat()
            except OSError:
                return f"{rel} is missing"
            memo = (str(path), st.st_size, st.st_mtime_ns)
            actual = self._verified.get(memo)
            if actual is None:
                actual = sha256(path)
                self._verified[memo] = actual
            if actual != digest:
                return f"{rel} does not match its hash (truncated or garbled)"
        return None

    def remove(self, directory: Path) -> None:
        """Delete an entry directory, renaming it aside first so no reader sees half of it."""
        if not directory.exists():
            return
        trash = directory.parent / f".trash-{uuid.uuid4().hex[:12]}"
        try:
            os.replace(directory, trash)
        except OSError:
            trash = directory
        shutil.rmtree(trash, ignore_errors=True)

    def remove_unless_locked(self, entry: EntryInfo) -> bool:
        """Remove ``entry`` unless a compile holds its lock right now; True if removed."""
        lock = self.lock_path(entry.id)
        if fcntl is None or not lock.exists():
            self.remove(entry.path)
            return True
        fd = os.open(lock, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # in use by a compile right now
            self.remove(entry.path)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
        finally:
            os.close(fd)

    # ---- the whole level -------------------------------------------------------------------

    def scan(self) -> list[EntryInfo]:
        """Every entry on disk, least recently used first."""
        found = []
        try:
            children = list(os.scandir(self.root))
        except OSError:
            return []
        for child in children:
            if not child.is_dir() or child.name.startswith(".") or child.name == LOCKS:
                continue
            found.append(entry_info(Path(child.path)))
        return sorted(found, key=lambda e: e.last_used)

    def empty_trash(self) -> None:
        """Delete what removals renamed aside and did not finish deleting."""
        if self.root.exists():
            for child in self.root.iterdir():
                if child.name.startswith(".trash-"):
                    shutil.rmtree(child, ignore_errors=True)

    def add_usage(self, added: int, limit: int) -> bool:
        """Add ``added`` bytes to the running total in ``usage.json`` (every process adds
        what it stores), so a store costs no directory scan. Returns True, writing nothing,
        when a scan is due instead: the total passes ``limit``, the last scan is old, or
        there is no readable total — between scans the total is an estimate."""
        try:
            usage = json.loads((self.root / USAGE).read_text())
            total, scanned = int(usage["bytes"]) + added, float(usage["scanned"])
        except (OSError, ValueError, KeyError, TypeError):
            total, scanned = -1, 0.0
        if total < 0 or total > limit or time.time() - scanned > RESCAN_S:
            return True
        self.write_usage(total, scanned)
        return False

    def write_usage(self, total: int, scanned: float) -> None:
        with contextlib.suppress(OSError):
            write_atomic(self.root / USAGE,
                         json.dumps({"bytes": total, "scanned": scanned}).encode())
