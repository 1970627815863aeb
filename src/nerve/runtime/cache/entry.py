"""The on-disk entry format: file names, the manifest, hashing and atomic writes.

An entry directory holds ``plan.safetensors``, ``artifacts/`` and, written last,
``manifest.json`` (the commit record). This module knows what a manifest holds and how to
check one; :mod:`nerve.runtime.cache.disk` decides when to read, write and remove entries.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nerve._version import __version__
from nerve.compiler.targets import Target

log = logging.getLogger("nerve")

MANIFEST = "manifest.json"
PLAN_FILE = "plan.safetensors"
ARTIFACTS = "artifacts"
ENTRY_FORMAT = "nerve.cache/1"


class CacheWarning(RuntimeWarning):
    """A cache entry was discarded (corrupt, foreign) or the cache could not be written."""


def warn(message: str) -> None:
    """Log ``message`` and raise it as a :class:`CacheWarning` (never an error)."""
    log.warning(message)
    warnings.warn(message, CacheWarning, stacklevel=4)


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """A hash of nerve's version and the sources that shape a plan or an engine artifact.

    In an installed release it changes with the version; in a working tree it changes with
    every edit to the IR, the compiler or the engines, so the cache never serves a plan an
    older compiler made.
    """
    root = Path(__file__).resolve().parents[2]  # src/nerve
    h = hashlib.sha256(__version__.encode())
    for sub in ("ir", "compiler", "engines"):
        for path in sorted((root / sub).rglob("*")):
            if path.suffix in (".py", ".c", ".h") and path.is_file():
                h.update(str(path.relative_to(root)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def entry_id(key: str) -> str:
    """The directory name of ``key``'s entry (the key and the compiler's fingerprint)."""
    return hashlib.sha256(f"{key}:{fingerprint()}".encode()).hexdigest()[:40]


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def content_hash(files: Mapping[str, str]) -> str:
    """One hash over a manifest's file table, so an edited table is caught too."""
    return hashlib.sha256(json.dumps(dict(sorted(files.items()))).encode()).hexdigest()


def hash_files(directory: Path) -> tuple[dict[str, str], int]:
    """The SHA-256 of every file of an entry but the manifest, and their total size."""
    files = {}
    total = 0
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and rel != MANIFEST and not path.name.startswith("."):
            files[rel] = sha256(path)
            total += path.stat().st_size
    return files, total


def expected_identity(key: str) -> dict[str, str]:
    """The manifest fields an entry for ``key`` must carry to be served by this nerve."""
    return {
        "format": ENTRY_FORMAT,
        "id": entry_id(key),
        "key": key,
        "nerve": __version__,
        "fingerprint": fingerprint(),
    }


def make_manifest(key: str, target: Target, files: dict[str, str], total: int) -> dict[str, Any]:
    """The manifest that commits an entry for ``key`` holding ``files``."""
    return {
        **expected_identity(key),
        "target": target.name,
        "features": list(target.features),
        "created": time.time(),
        "files": files,
        "bytes": total,
        "content_hash": content_hash(files),
    }


def foreign(manifest: Mapping[str, Any], key: str) -> str | None:
    """Why the manifest belongs to another key, version or compiler; None if it is ours."""
    for field_name, value in expected_identity(key).items():
        if manifest.get(field_name) != value:
            return f"{field_name} is {str(manifest.get(field_name))[:24]!r}, expected " \
                   f"{str(value)[:24]!r}"
    return None


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


def entry_info(directory: Path) -> EntryInfo:
    """What the manifest says of an entry; an entry without a readable one is incomplete."""
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
