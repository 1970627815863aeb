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

The package: :mod:`~nerve.runtime.cache.entry` (the entry format: manifest, hashes, atomic
writes), :mod:`~nerve.runtime.cache.disk` (the disk level: locks, reads, removal, usage),
:mod:`~nerve.runtime.cache.memory` (the memory LRU), :mod:`~nerve.runtime.cache.plans`
(weightless copies of plans) and :mod:`~nerve.runtime.cache.program_cache` (the facade).

>>> import tempfile
>>> cache = ProgramCache(tempfile.mkdtemp())
>>> cache.lookup("0" * 64) is None
True
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from nerve import flags
from nerve.errors import CompileError

from .entry import MANIFEST, PLAN_FILE, CacheWarning, EntryInfo, fingerprint
from .plans import bind_weights, cacheable, copy_plan, strip_weights
from .program_cache import CacheStats, ProgramCache, parse_size

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
    "MANIFEST",
    "PLAN_FILE",
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
