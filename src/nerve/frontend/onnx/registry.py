"""Registry of ONNX op importers, by op type, domain and opset version.

An importer turns one ONNX node into IR nodes in nerve's canonical form (the latest ONNX
semantics of the op). Most ops need no rewriting and use :func:`passthrough`; ops whose
inputs or attributes changed across opsets register a function that rewrites the old form.

>>> from nerve.frontend.onnx.registry import lookup
>>> lookup("Relu", "", 14) is not None
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

    from nerve.frontend.onnx.context import ImportContext

ImporterFn = Callable[["ImportContext", "onnx.NodeProto"], None]


@dataclass(frozen=True)
class Importer:
    op_type: str
    domain: str
    since: int  # first schema version (since_version) this importer handles
    until: int  # last schema version it handles (inclusive)
    fn: ImporterFn


_REGISTRY: dict[tuple[str, str], list[Importer]] = {}


def importer(
    *op_types: str, since: int = 1, until: int = 10_000, domain: str = ""
) -> Callable[[ImporterFn], ImporterFn]:
    """Register ``fn`` as the importer of ``op_types`` for schema versions since..until."""

    def wrap(fn: ImporterFn) -> ImporterFn:
        for op in op_types:
            _REGISTRY.setdefault((op, domain), []).append(Importer(op, domain, since, until, fn))
        return fn

    return wrap


def lookup(op_type: str, domain: str, schema_version: int) -> Importer | None:
    """The importer for the op's schema version, or None when nerve does not support it."""
    _ensure_loaded()
    for imp in _REGISTRY.get((op_type, domain), []):
        if imp.since <= schema_version <= imp.until:
            return imp
    return None


def supported_ops(domain: str = "") -> list[str]:
    """Every op type with at least one importer, sorted."""
    _ensure_loaded()
    return sorted(op for (op, d) in _REGISTRY if d == domain)


def _ensure_loaded() -> None:
    # Importing the package registers every family module's importers.
    import nerve.frontend.onnx.importers  # noqa: F401
