"""Build and cache the native engine's shared libraries.

Two kinds of library live under ``$NERVE_CACHE_DIR/native`` (default ``~/.cache/nerve``):

* ``kernels-<hash>/libnervek-<hash>.so`` — the kernel library (``csrc/*.c``), built once per
  toolchain and kernel source;
* ``lib-<hash>/segments.so`` — generated segment code, one or more segments per library
  (batch builds put many segments into one library, one compiler run).

Each segment's code hash (which covers the toolchain and the kernel library too) is indexed in
``seg/<hash>``, naming the library that holds its entry point, so a segment compiled once —
alone or in a batch — is never compiled again. Every library directory records the SHA-256 of
its ``.so`` in ``meta.json``; an entry whose library is missing, corrupt or foreign is removed
and rebuilt, never loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from nerve import flags
from nerve.engines.native.toolchain import CSRC, Toolchain, log, run_compiler, source_hash
from nerve.errors import CompileError

_lock = threading.RLock()
_verified: dict[Path, str] = {}  # library path -> sha256 already checked in this process


def cache_root() -> Path:
    return Path(os.path.expanduser(flags.get("NERVE_CACHE_DIR"))) / "native"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _valid(directory: Path, lib_name: str, identity: str) -> bool:
    lib, meta_path = directory / lib_name, directory / "meta.json"
    if not lib.is_file() or not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("identity") != identity:
        return False
    if _verified.get(lib) == meta.get("sha256"):
        return True
    if _sha256(lib) != meta.get("sha256"):
        return False
    _verified[lib] = meta["sha256"]
    return True


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished build directory into place (another process may have won the race)."""
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_dir(
    final: Path,
    lib_name: str,
    identity: str,
    sources: dict[str, str],
    command: list[str],
    extra_meta: dict[str, object],
) -> None:
    """Write ``sources`` and run ``command`` (with {out} and {src} placeholders) in a fresh
    directory, record the library's hash, then publish the directory as ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    paths = []
    for name, text in sources.items():
        (tmp / name).write_text(text)
        paths.append(str(tmp / name))
    cmd = [c for part in command for c in _expand(part, tmp / lib_name, paths)]
    try:
        run_compiler(cmd, tmp / next(iter(sources)), tmp / "build.log")
    except CompileError as exc:
        # Keep the failed sources for inspection under a stable name.
        failed = final.parent / f"failed-{final.name}"
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(tmp, failed)
        raise CompileError(str(exc).replace(str(tmp), str(failed))) from None
    meta = {"identity": identity, "sha256": _sha256(tmp / lib_name), **extra_meta}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    _publish(tmp, final)


def _expand(part: str, out: Path, sources: list[str]) -> list[str]:
    if part == "{out}":
        return [str(out)]
    if part == "{src}":
        return sources
    return [part]


# ---- the kernel library ----------------------------------------------------------------------


@dataclass(frozen=True)
class KernelLibrary:
    path: Path
    hash: str
    handle: ctypes.CDLL


def kernel_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(CSRC.iterdir()) if p.suffix in (".c", ".h")}


_kernels: dict[str, KernelLibrary] = {}


def kernel_library(tc: Toolchain) -> KernelLibrary:
    """The kernel library for ``tc``, built on first use and loaded once per process."""
    sources = kernel_sources()
    identity = tc.identity + " ".join(tc.cflags(kernels=True))
    digest = source_hash(identity, *(f"{k}\n{v}" for k, v in sources.items()))
    with _lock:
        if digest in _kernels:
            return _kernels[digest]
        name = f"libnervek-{digest[:16]}.so"
        directory = cache_root() / f"kernels-{digest[:16]}"
        if not _valid(directory, name, identity):
            log.info("building the native kernel library in %s", directory)
            c_files = {k: v for k, v in sources.items() if k.endswith(".c")}
            cmd = [
                tc.cc,
                *tc.cflags(kernels=True),
                f"-Wl,-soname,{name}",
                "-o",
                "{out}",
                "{src}",
                *(tc.blas.ldflags() if tc.blas else []),
                "-lm",
            ]
            _build_dir(directory, name, identity, c_files, cmd, {"kind": "kernels"})
        handle = ctypes.CDLL(str(directory / name))
        handle.nk_init()
        lib = KernelLibrary(directory / name, digest, handle)
        _kernels[digest] = lib
        return lib


# ---- segment libraries -------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One segment's generated code: ``code`` defines the function ``symbol``."""

    key: str  # content hash of the code + toolchain + kernel library
    symbol: str
    code: str


HEADER = '#include "nk.h"\n#include "nk_math.h"\n\n'


def _index_path(key: str) -> Path:
    return cache_root() / "seg" / key[:2] / key


def lookup(key: str, identity: str) -> Path | None:
    """The library that already holds segment ``key``, or None."""
    index = _index_path(key)
    try:
        lib_dir = cache_root() / index.read_text().strip()
    except OSError:
        return None
    if _valid(lib_dir, "segments.so", identity):
        return lib_dir / "segments.so"
    return None


def build_units(tc: Toolchain, kernels: KernelLibrary, units: list[Unit]) -> Path:
    """Compile ``units`` into one library (one compiler run) and index every segment in it."""
    identity = tc.identity + kernels.hash
    unique = {u.key: u for u in units}
    digest = source_hash(identity, *sorted(unique))
    directory = cache_root() / f"lib-{digest[:24]}"
    with _lock:
        if not _valid(directory, "segments.so", identity):
            code = HEADER + "\n".join(u.code for u in unique.values())
            cmd = [
                tc.cc,
                *tc.cflags(),
                "-o",
                "{out}",
                "{src}",
                str(kernels.path),
                f"-Wl,-rpath,{kernels.path.parent}",
                "-lm",
            ]
            _build_dir(
                directory,
                "segments.so",
                identity,
                {"segments.c": code},
                cmd,
                {"kind": "segments", "symbols": [u.symbol for u in unique.values()]},
            )
        for key in unique:
            index = _index_path(key)
            index.parent.mkdir(parents=True, exist_ok=True)
            tmp = index.with_suffix(f".{uuid.uuid4().hex[:8]}")
            tmp.write_text(directory.name)
            os.replace(tmp, index)
    return directory / "segments.so"


_loaded: dict[Path, ctypes.CDLL] = {}


def load(path: Path) -> ctypes.CDLL:
    """dlopen ``path`` once per process."""
    with _lock:
        handle = _loaded.get(path)
        if handle is None:
            handle = ctypes.CDLL(str(path))
            _loaded[path] = handle
        return handle
