"""Saved programs (``Program.save`` / ``nerve.load``) and the plan files of cache entries.

A saved program is **one safetensors file** (:mod:`nerve.runtime.safetensors`), so any
safetensors reader can list and read its weights:

* ``param/<name>`` — the model's Params, current values (what the weight arena is baked from);
* ``plan/<t>`` — the tensors of the Plan document (constants, array attributes);
* ``source/<t>`` — the tensors of the source graph's document;
* ``artifact/<path>`` — engine build artifacts (``uint8`` blobs);
* ``__metadata__`` — ``format`` (``nerve.program``), ``format_version``, ``nerve`` (version),
  ``key``, ``target``, ``features`` (the CPU features the plan was compiled for), ``plan``
  (the Plan as JSON, no weights), ``source`` (the model's graph before the passes, so another
  machine can recompile), ``options``, ``key_extra``, and the integrity record: ``crc32`` of
  every tensor and ``sha256`` over the documents and that table.

No pickle anywhere: a file is data, and loading it runs no code the file names.

Loading validates the file (structure, every offset, the hashes: a truncated or garbled file
is a :class:`~nerve.errors.ModelFormatError`) and the machine: a program compiled for CPU
features this machine lacks (say AMX) or by another nerve version is recompiled from the
embedded source graph with a warning (``recompile="auto"``), or refused with a
:class:`~nerve.errors.TargetError` naming the missing features (``recompile=False``).

>>> import numpy as np, nerve, tempfile, os
>>> from nerve.models.mlp import build_mlp, mlp_inputs
>>> program = nerve.compile(build_mlp(0), cache=False)
>>> path = os.path.join(tempfile.mkdtemp(), "mlp.nerve")
>>> program.save(path)
>>> again = nerve.load(path)
>>> x = mlp_inputs(0)
>>> bool(np.array_equal(again.run(x)["probs"], program.run(x)["probs"]))
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nerve._version import __version__
from nerve.compiler.plan import Plan
from nerve.compiler.serialize import (
    decode_graph,
    decode_plan,
    decode_value,
    encode_graph,
    encode_plan,
    encode_value,
)
from nerve.compiler.targets import get_target
from nerve.errors import ModelFormatError, TargetError
from nerve.ir import Graph
from nerve.runtime.safetensors import TensorLike, parse, read_tensors, write_tensors

if TYPE_CHECKING:
    from nerve.runtime.program import Program

log = logging.getLogger("nerve")

FORMAT = "nerve.program"
FORMAT_VERSION = "1"
PLAN_FORMAT = "nerve.plan"
PARAM_PREFIX = "param/"
PLAN_PREFIX = "plan/"
SOURCE_PREFIX = "source/"
ARTIFACT_PREFIX = "artifact/"


@dataclass
class Origin:
    """How a Program was made; ``save`` embeds it so ``load`` can recompile elsewhere."""

    graph: Graph | None = None  # the model's graph before the passes (no weights)
    options: dict[str, Any] = field(default_factory=dict)  # compile options as given
    constants: Mapping[str, Any] | None = None  # nerve.compile(constants=...), for ONNX updates
    key_extra: dict[str, Any] | None = None  # what the structural key hashed besides the graph


def is_program_file(metadata: Mapping[str, str]) -> bool:
    return metadata.get("format") == FORMAT


# ---- plan files (cache entries) ------------------------------------------------------------


def plan_to_bytes(plan: Plan) -> bytes:
    """``plan`` (structure only) as the bytes of a safetensors file."""
    import io

    from nerve.runtime.safetensors import write_stream

    tensors: dict[str, np.ndarray] = {}
    doc = encode_plan(plan, tensors)
    buffer = io.BytesIO()
    write_stream(buffer, {PLAN_PREFIX + k: v for k, v in tensors.items()},
                 {"format": PLAN_FORMAT, "nerve": __version__, "plan": json.dumps(doc)})
    return buffer.getvalue()


def plan_from_bytes(data: bytes, source: str = "plan") -> Plan:
    """The Plan in ``data`` (from :func:`plan_to_bytes`); its graph has no weights."""
    f = parse(data, source)
    if f.metadata.get("format") != PLAN_FORMAT:
        raise ModelFormatError(f"{source} does not hold a nerve plan")
    tensors = _strip(f.arrays, PLAN_PREFIX)
    return decode_plan(_json(f.metadata, "plan", source), tensors)


# ---- saving --------------------------------------------------------------------------------


def save_program(program: Program, path: str | os.PathLike[str]) -> None:
    """Write ``program`` to ``path`` as one file (see the module docstring)."""
    plan = program.plan
    tensors: dict[str, TensorLike] = {}
    plan_tensors: dict[str, np.ndarray] = {}
    meta: dict[str, str] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nerve": __version__,
        "key": plan.key,
        "target": plan.target.name,
        "features": json.dumps(list(plan.target.features)),
        "plan": json.dumps(encode_plan(plan, plan_tensors)),
    }
    tensors.update({PLAN_PREFIX + k: v for k, v in plan_tensors.items()})
    origin = program.origin
    if origin is not None:
        extra: dict[str, np.ndarray] = {}
        if origin.graph is not None:
            meta["source"] = json.dumps(encode_graph(origin.graph, extra))
        meta["options"] = json.dumps(encode_value(dict(origin.options), extra))
        if origin.key_extra is not None:
            meta["key_extra"] = json.dumps(encode_value(origin.key_extra, extra))
        tensors.update({SOURCE_PREFIX + k: v for k, v in extra.items()})
    if plan.artifact_dir is not None and Path(plan.artifact_dir).is_dir():
        root = Path(plan.artifact_dir)
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            blob = np.frombuffer(file.read_bytes(), np.uint8)
            tensors[ARTIFACT_PREFIX + file.relative_to(root).as_posix()] = blob
    for name, array in program.weights.items():
        tensors[PARAM_PREFIX + name] = (plan.params[name].type.dtype
                                        if name in plan.params else _dtype_of(plan, name), array)
    meta.update(_integrity(meta, tensors))
    write_tensors(path, tensors, meta)


def _dtype_of(plan: Plan, name: str) -> Any:
    return plan.graph.params[name].type.dtype


def _raw(value: TensorLike) -> memoryview:
    array = value[1] if isinstance(value, tuple) else value
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return memoryview(flat)  # type: ignore[arg-type]


def _integrity(meta: Mapping[str, str], tensors: Mapping[str, Any]) -> dict[str, str]:
    """``crc32`` per tensor, ``sha256`` over the documents and the crc table."""
    crcs = {name: zlib.crc32(_raw(value)) for name, value in tensors.items()}
    table = json.dumps(crcs, sort_keys=True)
    h = hashlib.sha256(table.encode())
    for key in ("format", "format_version", "nerve", "key", "target", "features", "plan",
                "source", "options", "key_extra"):
        h.update(f"\0{key}\0{meta.get(key, '')}".encode())
    return {"crc32": table, "sha256": h.hexdigest()}


# ---- loading -------------------------------------------------------------------------------


def load_program(
    path: str | os.PathLike[str],
    *,
    recompile: bool | str = "auto",
    verify: bool = True,
    cache: Any = True,
) -> Program:
    """Open a program saved by :meth:`Program.save` (see the module docstring).

    ``recompile``: ``"auto"`` recompiles from the embedded source graph when the file was
    compiled for CPU features this machine lacks or by another nerve version; ``False``
    raises instead; ``True`` always recompiles. ``verify=False`` skips the hash checks.
    """
    source = str(path)
    f = read_tensors(path)
    meta = f.metadata
    if not is_program_file(meta):
        raise ModelFormatError(
            f"{source} is a safetensors file but not a saved nerve program (its metadata has "
            "no format 'nerve.program'); use Program.update_weights to read weights from it"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(
            f"{source} is a nerve program file of format version "
            f"{meta.get('format_version')!r}; this nerve reads version {FORMAT_VERSION}"
        )
    if verify:
        _verify(source, meta, f.arrays)
    weights = {n[len(PARAM_PREFIX):]: a for n, a in f.arrays.items()
               if n.startswith(PARAM_PREFIX)}
    why = _mismatch(meta)
    if recompile is True or (why and recompile == "auto"):
        return _recompile(source, meta, f.arrays, weights, why or "recompile=True", cache)
    if why:
        raise TargetError(f"{source}: {why}. Load it with recompile='auto' to recompile it "
                          "for this machine (the file embeds its source graph)")
    plan = decode_plan(_json(meta, "plan", source), _strip(f.arrays, PLAN_PREFIX))
    plan.graph.weights = dict(weights)
    return _program(plan, meta, f.arrays, cache)


def _verify(source: str, meta: Mapping[str, str], arrays: Mapping[str, np.ndarray]) -> None:
    try:
        recorded = json.loads(meta.get("crc32", ""))
    except ValueError:
        raise ModelFormatError(f"{source}: its integrity record is garbled") from None
    if set(recorded) != set(arrays):
        raise ModelFormatError(f"{source}: the tensors do not match its integrity record")
    expected = _integrity(meta, arrays)
    if expected["sha256"] != meta.get("sha256") or expected["crc32"] != meta.get("crc32"):
        bad = [n for n in arrays if recorded.get(n) != zlib.crc32(_raw(arrays[n]))]
        what = f"tensors {bad[:5]} differ" if bad else "its metadata differs"
        raise ModelFormatError(
            f"{source} is corrupt: {what} from what was saved (hash mismatch); save the "
            "program again"
        )


def _mismatch(meta: Mapping[str, str]) -> str | None:
    """Why this machine cannot run the saved plan as is (None: it can)."""
    if meta.get("nerve") != __version__:
        return f"it was saved by nerve {meta.get('nerve')}, this is nerve {__version__}"
    try:
        target = get_target(meta.get("target", ""))
    except TargetError as exc:
        return str(exc)
    saved = json.loads(meta.get("features", "[]"))
    missing = [f for f in saved if f not in target.features]
    if missing:
        have = ", ".join(target.features) or "none of them"
        return (f"it was compiled for CPU features {', '.join(missing)} that this machine "
                f"lacks (it has {have})")
    return None


def _recompile(
    source: str,
    meta: Mapping[str, str],
    arrays: Mapping[str, np.ndarray],
    weights: Mapping[str, np.ndarray],
    why: str,
    cache: Any,
) -> Program:
    from nerve.runtime.compile import compile as compile_program

    if "source" not in meta:
        raise TargetError(f"{source}: {why}, and the file has no source graph to recompile")
    extra = _strip(arrays, SOURCE_PREFIX)
    graph = decode_graph(_json(meta, "source", source), extra)
    graph.weights = dict(weights)
    options = decode_value(json.loads(meta.get("options", "null")), extra) or {}
    message = f"{source}: {why}; recompiling it for this machine"
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    return compile_program(graph, meta.get("target", "host"), cache=cache, **options)


def _program(plan: Plan, meta: Mapping[str, str], arrays: Mapping[str, np.ndarray],
             cache_option: Any) -> Program:
    from nerve.runtime import cache as cache_module
    from nerve.runtime.compile import build_executables
    from nerve.runtime.program import Program

    artifacts = _strip(arrays, ARTIFACT_PREFIX)
    cache = cache_module.resolve(cache_option) if cache_module.cacheable(plan.target) else None
    if cache is not None:
        plan.artifact_dir = cache.artifact_dir(plan.key)
        if plan.artifact_dir is not None:
            _install(plan.artifact_dir, artifacts)
    program = Program(plan, build_executables(plan))
    extra = _strip(arrays, SOURCE_PREFIX)
    program.origin = Origin(
        graph=decode_graph(json.loads(meta["source"]), extra) if "source" in meta else None,
        options=decode_value(json.loads(meta.get("options", "null")), extra) or {},
        key_extra=decode_value(json.loads(meta["key_extra"]), extra)
        if "key_extra" in meta else None,
    )
    return program


def _install(directory: Path, artifacts: Mapping[str, np.ndarray]) -> None:
    """Put the file's artifacts where the engines look, unless identical ones are there."""
    root = Path(directory).resolve()
    for rel, blob in artifacts.items():
        target = (root / rel).resolve()
        if root not in target.parents:
            raise ModelFormatError(f"artifact path {rel!r} leaves the artifact directory")
        data = blob.tobytes()
        if target.is_file() and target.read_bytes() == data:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)


def _strip(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {n[len(prefix):]: a for n, a in arrays.items() if n.startswith(prefix)}


def _json(meta: Mapping[str, str], key: str, source: str) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, ValueError):
        raise ModelFormatError(f"{source}: its {key!r} record is missing or garbled") from None


__all__ = [
    "FORMAT",
    "Origin",
    "is_program_file",
    "load_program",
    "plan_from_bytes",
    "plan_to_bytes",
    "save_program",
]
