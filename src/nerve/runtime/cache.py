"""The program cache: compile each structure once, in this process and across processes.

Entries are keyed by the structural key (:func:`nerve.ir.structural_key`: ops, attributes,
types, constants, Param names and types, target, CPU features, options, nerve version —
never weight values), so two models that differ only in weights share one entry. An entry
holds the compiled Plan *without weights* and the engines' build artifacts; a hit binds the
caller's weights to it and runs no pass.

Two levels:

* **memory** — an LRU of Plans bounded by bytes (``memory_bytes``);
* **disk** — ``$NERVE_CACHE_DIR/programs/<id>/`` (default ``~/.cache/nerve``), bounded by
  ``NERVE_CACHE_SIZE`` (least recently used entries are evicted after a store).

An entry directory holds ``plan.safetensors`` (the Plan as JSON + tensors, no pickle: see
:mod:`nerve.compiler.serialize`), ``artifacts/`` (whatever engines put in
:meth:`ProgramCache.artifact_dir`) and, written last, ``manifest.json``: the structural key,
nerve's version, a fingerprint of the compiler's and engines' sources (so a changed compiler
never serves stale plans), the target and its CPU features, and the SHA-256 of every file.
Each file is written to a temporary name and renamed into place; the manifest is the commit
record. A lookup checks everything: an entry that is incomplete, truncated, garbled (a hash
mismatch) or foreign (another version, key, target or feature set) is discarded with a
warning and rebuilt, never loaded (DESIGN invariant 3).

Two processes compiling the same model at once: the compile runs under an exclusive file
lock per key (``locks/<id>.lock``, ``flock``), so the second waits, then finds the first one's
entry — one compile, both get the program.

Engine artifacts: the runtime sets ``plan.artifact_dir`` (this cache's
:meth:`~ProgramCache.artifact_dir` for the plan's key) before it calls ``engine.build``. An
engine keeps its build products there (the native engine: its shared library); they are
hashed into the manifest when the entry is stored, verified on every lookup, evicted with the
entry and embedded by ``Program.save``. ``plan.artifact_dir`` is None when the cache is off.

>>> import tempfile
>>> cache = ProgramCache(tempfile.mkdtemp())
>>> cache.lookup("0" * 64) is None
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nerve import flags
from nerve._version import __version__
from nerve.compiler.plan import Plan, Segment
from nerve.compiler.targets import Target, get_target
from nerve.errors import CompileError, NerveError, TargetError

try:
    import fcntl
except ImportError:  # not POSIX: locks are per process only
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("nerve")

MANIFEST = "manifest.json"
PLAN_FILE = "plan.safetensors"
ARTIFACTS = "artifacts"
ENTRY_FORMAT = "nerve.cache/1"
USAGE = "usage.json"  # running total of the disk level, so stores need no directory scan
RESCAN_S = 3600.0  # rescan (and evict) at least this often
DEFAULT_MEMORY_BYTES = 256 << 20
LOCK_TIMEOUT_S = 600.0


class CacheWarning(RuntimeWarning):
    """A cache entry was discarded (corrupt, foreign) or the cache could not be written."""


def _warn(message: str) -> None:
    log.warning(message)
    warnings.warn(message, CacheWarning, stacklevel=4)


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


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """A hash of nerve's version and the sources that shape a plan or an engine artifact.

    In an installed release it changes with the version; in a working tree it changes with
    every edit to the IR, the compiler or the engines, so the cache never serves a plan an
    older compiler made.
    """
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(__version__.encode())
    for sub in ("ir", "compiler", "engines"):
        for path in sorted((root / sub).rglob("*")):
            if path.suffix in (".py", ".c", ".h") and path.is_file():
                h.update(str(path.relative_to(root)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def cacheable(target: Target) -> bool:
    """Only the built-in targets are cached: a custom Target may share a built-in's name."""
    try:
        return get_target(target.name) is target
    except TargetError:
        return False


def copy_plan(plan: Plan, weights: Mapping[str, np.ndarray] | None = None) -> Plan:
    """A copy of ``plan`` that shares no mutable container with it, holding ``weights``.

    Entries and the plans handed to programs are kept apart this way, so code that adjusts
    its program's plan (a test retargeting segments) can never change a cached entry. Arrays
    (constants) are shared: they are read-only.
    """
    graph = plan.graph.copy()
    graph.weights = dict(weights or {})
    index = {id(n): i for i, n in enumerate(plan.graph.nodes)}
    segments = [
        Segment(s.index, s.engine, [graph.nodes[index[id(n)]] for n in s.nodes])
        for s in plan.segments
    ]
    report = dataclasses.replace(plan.report, passes=list(plan.report.passes),
                                 notes=list(plan.report.notes),
                                 segments=list(plan.report.segments),
                                 diagnostics=list(plan.report.diagnostics))
    return dataclasses.replace(
        plan, graph=graph, segments=segments, report=report, options=dict(plan.options),
        bake_recipes=dict(plan.bake_recipes), layouts=dict(plan.layouts),
        params=dict(plan.params), diagnostics=list(plan.diagnostics),
        memory=dataclasses.replace(plan.memory, buffers=dict(plan.memory.buffers)),
        artifact_dir=None,
    )


def strip_weights(plan: Plan) -> Plan:
    """A copy of the plan without weights: what an entry holds."""
    return copy_plan(plan)


def bind_weights(plan: Plan, weights: Mapping[str, np.ndarray], note: str) -> Plan:
    """A copy of the cached ``plan`` holding ``weights``, its report saying "hit"."""
    bound = copy_plan(plan, weights)
    bound.report.cache = "hit"
    bound.report.notes.append(note)
    return bound


def _plan_nbytes(plan: Plan) -> int:
    g = plan.graph
    return sum(a.nbytes for a in g.constants.values()) + 400 * len(g.nodes) + 200 * len(g.types)


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


@dataclass(frozen=True)
class EntryInfo:
    """One on-disk entry, as ``nerve cache ls`` lists it."""

    id: str
    key: str
    target: str
    nerve: str
    bytes: int
    created: float
    last_used: float
    path: Path
    complete: bool


class _FileLock:
    """An exclusive ``flock`` on ``path``, polled so a wait is bounded by ``timeout``."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> _FileLock:
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
                    _warn(f"waited {self.timeout:.0f} s for the cache lock {self.path}; "
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


class ProgramCache:
    """Compiled Plans by structural key, in memory and on disk (see the module docstring).

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
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes if disk_bytes is not None else parse_size(
            flags.get("NERVE_CACHE_SIZE"))
        self.lock_timeout = lock_timeout
        self.stats = CacheStats()
        self._memory: OrderedDict[str, tuple[Plan, int]] = OrderedDict()
        self._memory_used = 0
        self._lock = threading.RLock()
        self._verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha

    # ---- naming -------------------------------------------------------------------------

    def entry_id(self, key: str) -> str:
        """The directory name of ``key``'s entry (the key and the compiler's fingerprint)."""
        return hashlib.sha256(f"{key}:{fingerprint()}".encode()).hexdigest()[:40]

    def entry_dir(self, key: str) -> Path:
        return self.root / self.entry_id(key)

    def artifact_dir(self, key: str) -> Path | None:
        """Where engines keep build artifacts for ``key`` (created; None without a disk)."""
        if not self.disk:
            return None
        path = self.entry_dir(key) / ARTIFACTS
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _warn(f"cannot create the cache directory {path}: {exc}")
            return None
        return path

    # ---- the protocol compile() follows ---------------------------------------------------

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[None]:
        """Hold ``key`` exclusively (threads and processes) for a lookup-compile-store."""
        if not self.disk:
            yield
            return
        with _FileLock(self.root / "locks" / f"{self.entry_id(key)}.lock", self.lock_timeout):
            yield

    def lookup(self, key: str) -> Plan | None:
        """The cached Plan for ``key`` (without weights), or None. Counts a hit or a miss."""
        eid = self.entry_id(key)
        with self._lock:
            found = self._memory.get(eid)
            if found is not None:
                self._memory.move_to_end(eid)
                self.stats.memory_hits += 1
                return found[0]
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
                self._remove(directory)

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
                _warn(f"program cache: could not store the entry for {key[:12]}: {exc}")
                self._remove(self.entry_dir(key))
        self._remember(self.entry_id(key), struct, size)
        with self._lock:
            self.stats.stores += 1

    # ---- memory level ---------------------------------------------------------------------

    def _remember(self, eid: str, plan: Plan, size: int | None) -> None:
        nbytes = size if size is not None else _plan_nbytes(plan)
        with self._lock:
            old = self._memory.pop(eid, None)
            if old is not None:
                self._memory_used -= old[1]
            if nbytes > self.memory_bytes:
                return
            self._memory[eid] = (plan, nbytes)
            self._memory_used += nbytes
            while self._memory_used > self.memory_bytes and self._memory:
                _, (_, dropped) = self._memory.popitem(last=False)
                self._memory_used -= dropped

    def forget(self) -> None:
        """Empty the memory level (the disk level stays)."""
        with self._lock:
            self._memory.clear()
            self._memory_used = 0

    # ---- disk level -----------------------------------------------------------------------

    def _write_entry(self, key: str, plan: Plan) -> int:
        from nerve.runtime.serialize import plan_to_bytes

        directory = self.entry_dir(key)
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(directory / PLAN_FILE, plan_to_bytes(plan))
        files = {}
        total = 0
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory).as_posix()
            if path.is_file() and rel != MANIFEST and not path.name.startswith("."):
                files[rel] = _sha256(path)
                total += path.stat().st_size
        manifest = {
            "format": ENTRY_FORMAT,
            "id": self.entry_id(key),
            "key": key,
            "nerve": __version__,
            "fingerprint": fingerprint(),
            "target": plan.target.name,
            "features": list(plan.target.features),
            "created": time.time(),
            "files": files,
            "bytes": total,
            "content_hash": _content_hash(files),
        }
        _write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1).encode())
        self._account(total)
        return total

    def _read_entry(self, key: str) -> Plan | None:
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
            return self._discard(directory, f"its manifest is garbled ({exc})")
        why = self._foreign(manifest, key)
        if why:
            return self._discard(directory, f"it is foreign: {why}")
        why = self._check_files(directory, manifest)
        if why:
            return self._discard(directory, why)
        try:
            plan = plan_from_bytes((directory / PLAN_FILE).read_bytes(), str(directory))
        except (OSError, NerveError, ValueError, KeyError, TypeError) as exc:
            return self._discard(directory, f"its plan cannot be decoded ({exc})")
        if plan.key != key:
            return self._discard(directory, "its plan has another structural key")
        with contextlib.suppress(OSError):
            os.utime(manifest_path)  # least recently used = oldest manifest mtime
        return plan

    def _foreign(self, manifest: Mapping[str, Any], key: str) -> str | None:
        expected = {
            "format": ENTRY_FORMAT,
            "id": self.entry_id(key),
            "key": key,
            "nerve": __version__,
            "fingerprint": fingerprint(),
        }
        for field_name, value in expected.items():
            if manifest.get(field_name) != value:
                return f"{field_name} is {str(manifest.get(field_name))[:24]!r}, expected " \
                       f"{str(value)[:24]!r}"
        return None

    def _check_files(self, directory: Path, manifest: Mapping[str, Any]) -> str | None:
        files = manifest.get("files")
        if not isinstance(files, dict) or PLAN_FILE not in files:
            return "its manifest lists no plan"
        if manifest.get("content_hash") != _content_hash(files):
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
                actual = _sha256(path)
                self._verified[memo] = actual
            if actual != digest:
                return f"{rel} does not match its hash (truncated or garbled)"
        return None

    def _discard(self, directory: Path, why: str) -> Plan | None:
        """Remove a bad entry with a warning; returns None (the lookup's answer: a miss)."""
        _warn(f"program cache: discarding entry {directory.name[:12]}: {why}; it will be "
              "rebuilt")
        with self._lock:
            self.stats.discarded += 1
        self._remove(directory)
        return None

    def _remove(self, directory: Path) -> None:
        if not directory.exists():
            return
        trash = directory.parent / f".trash-{uuid.uuid4().hex[:12]}"
        try:
            os.replace(directory, trash)
        except OSError:
            trash = directory
        shutil.rmtree(trash, ignore_errors=True)

    # ---- listing, size limit --------------------------------------------------------------

    def entries(self) -> list[EntryInfo]:
        """Every entry on disk, least recently used first."""
        found = []
        try:
            children = list(os.scandir(self.root))
        except OSError:
            return []
        for child in children:
            if not child.is_dir() or child.name.startswith(".") or child.name == "locks":
                continue
            found.append(self._info(Path(child.path)))
        return sorted(found, key=lambda e: e.last_used)

    def _info(self, directory: Path) -> EntryInfo:
        manifest_path = directory / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
            used = manifest_path.stat().st_mtime
            return EntryInfo(
                directory.name, str(manifest.get("key", "")), str(manifest.get("target", "")),
                str(manifest.get("nerve", "")), int(manifest.get("bytes", 0)),
                float(manifest.get("created", used)), used, directory, True,
            )
        except (OSError, ValueError, TypeError, AttributeError):
            size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
            used = directory.stat().st_mtime
            return EntryInfo(directory.name, "", "", "", size, used, used, directory, False)

    def disk_usage(self) -> int:
        return sum(e.bytes for e in self.entries())

    def _account(self, added: int) -> None:
        """Keep the running total of the disk level in ``usage.json`` (every process adds
        what it stores), so a store costs no directory scan; scan (and evict) when the total
        passes the limit or the last scan is old — the total is an estimate between scans."""
        usage_path = self.root / USAGE
        try:
            usage = json.loads(usage_path.read_text())
            total, scanned = int(usage["bytes"]) + added, float(usage["scanned"])
        except (OSError, ValueError, KeyError, TypeError):
            total, scanned = -1, 0.0
        if total < 0 or total > self.disk_bytes or time.time() - scanned > RESCAN_S:
            self.evict()
            return
        self._write_usage(total, scanned)

    def _write_usage(self, total: int, scanned: float) -> None:
        with contextlib.suppress(OSError):
            _write_atomic(self.root / USAGE,
                          json.dumps({"bytes": total, "scanned": scanned}).encode())

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
            if self._try_remove(entry):
                total -= entry.bytes
                removed += 1
        self._write_usage(total, time.time())
        with self._lock:
            self.stats.evicted += removed
            for eid in [e.id for e in entries if not e.path.exists()]:
                old = self._memory.pop(eid, None)
                if old is not None:
                    self._memory_used -= old[1]
        return removed

    def _try_remove(self, entry: EntryInfo) -> bool:
        lock = self.root / "locks" / f"{entry.id}.lock"
        if fcntl is None or not lock.exists():
            self._remove(entry.path)
            return True
        fd = os.open(lock, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # in use by a compile right now
            self._remove(entry.path)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
        finally:
            os.close(fd)

    def clear(self) -> tuple[int, int]:
        """Remove every entry (memory and disk); returns (entries, bytes) removed."""
        entries = self.entries()
        for entry in entries:
            self._remove(entry.path)
        if self.root.exists():
            for child in self.root.iterdir():
                if child.name.startswith(".trash-"):
                    shutil.rmtree(child, ignore_errors=True)
        self.forget()
        self._write_usage(0, time.time())
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
                "memory_bytes": self._memory_used,
                **dataclasses.asdict(self.stats),
            }


def _content_hash(files: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(sorted(files.items()))).encode()).hexdigest()


_default: ProgramCache | None = None
_default_lock = threading.Lock()


def default_cache() -> ProgramCache | None:
    """The process's cache at ``$NERVE_CACHE_DIR`` (None when ``NERVE_CACHE=0``)."""
    global _default
    if not flags.get_bool("NERVE_CACHE"):
        return None
    root = Path(os.path.expanduser(flags.get("NERVE_CACHE_DIR"))) / "programs"
    with _default_lock:
        if _default is None or _default.root != root:
            _default = ProgramCache()
        return _default


def resolve(option: Any) -> ProgramCache | None:
    """The cache a ``cache=`` compile option names: True/None (default), False, a cache."""
    if option is None or option is True:
        return default_cache()
    if option is False:
        return None
    if isinstance(option, ProgramCache):
        return option
    raise CompileError(
        f"cache= takes True, False or a ProgramCache, not {type(option).__name__}"
    )


__all__ = [
    "CacheStats",
    "CacheWarning",
    "EntryInfo",
    "ProgramCache",
    "bind_weights",
    "cacheable",
    "copy_plan",
    "default_cache",
    "fingerprint",
    "parse_size",
    "resolve",
    "strip_weights",
]
