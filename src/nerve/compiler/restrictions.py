"""Restriction catalogs: what each target refuses, found before anything is compiled.

A :class:`Restriction` is one known limit of a target: a code (``ANE-R04``), a class (one of
:data:`CLASSES`), a severity, a check over the graph, a fix (text, and optionally a *fixer* that
``normalize(fix=True)`` runs to repair the graph), and — in the check function's docstring —
where the fact comes from. Checking yields :class:`Diagnostic` objects naming the node or
tensor, what is wrong and what to do.

Catalogs live in :mod:`nerve.compiler.catalog` (one module per target) and register with
:func:`restriction`. :func:`evaluate_catalog` runs a target's catalog over a graph.

>>> [r.code for r in catalog("ane")][:3]
['ANE-R01', 'ANE-R02', 'ANE-R03']
>>> len(catalog("ane")) >= 20
True
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from nerve.compiler.targets import Target, get_target
from nerve.ir import Graph, Node

if TYPE_CHECKING:
    from nerve.compiler.context import KernelQuery, PassContext
    from nerve.compiler.plan import Segment

GRAPH_STRUCTURE = "graph structure"
OPERATOR_SUPPORT = "operator support"
MEMORY_LAYOUT = "memory layout"
NUMERICAL = "numerical behaviour"
WEIGHT_HANDLING = "weight handling"
RESOURCE_LIMITS = "resource limits"
COMPILATION_LIMITS = "compilation limits"
CLASSES = (GRAPH_STRUCTURE, OPERATOR_SUPPORT, MEMORY_LAYOUT, NUMERICAL, WEIGHT_HANDLING,
           RESOURCE_LIMITS, COMPILATION_LIMITS)

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES = (ERROR, WARNING, INFO)


@dataclass(frozen=True)
class Diagnostic:
    """One violation: which restriction, where, what is wrong, and what to do."""

    code: str
    klass: str
    severity: str
    node: str | None
    message: str
    fix: str
    fixable: bool = False  # `nerve check --fix` / normalize(fix=True) repairs it
    tensor: str | None = None

    @property
    def where(self) -> str:
        if self.node:
            return f"node {self.node!r}"
        if self.tensor:
            return f"tensor {self.tensor!r}"
        return "model"

    def key(self) -> tuple[str, str | None, str | None]:
        return (self.code, self.node, self.tensor)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Fixer = Callable[[Graph, "PassContext"], int]
CheckFn = Callable[["CheckContext", "Restriction"], Iterable[Diagnostic]]


@dataclass(frozen=True)
class Restriction:
    """A catalog entry. ``source`` (the check's docstring) says where the fact comes from."""

    code: str
    klass: str
    severity: str
    title: str
    fix: str
    check: CheckFn
    fixer: Fixer | None = None
    source: str = ""

    def diagnose(
        self,
        message: str,
        *,
        node: Node | str | None = None,
        tensor: str | None = None,
        fixable: bool | None = None,
        severity: str | None = None,
        fix: str | None = None,
    ) -> Diagnostic:
        name = node.name if isinstance(node, Node) else node
        return Diagnostic(
            self.code, self.klass, severity or self.severity, name, message, fix or self.fix,
            self.fixer is not None if fixable is None else fixable, tensor,
        )


_CATALOGS: dict[str, list[Restriction]] = {}


def restriction(
    target: str,
    code: str,
    klass: str,
    severity: str,
    title: str,
    fix: str,
    fixer: Fixer | None = None,
) -> Callable[[CheckFn], CheckFn]:
    """Register the decorated check as restriction ``code`` of ``target``'s catalog."""
    assert klass in CLASSES and severity in SEVERITIES, (klass, severity)

    def wrap(fn: CheckFn) -> CheckFn:
        entries = _CATALOGS.setdefault(target, [])
        entries[:] = [r for r in entries if r.code != code]
        entries.append(
            Restriction(code, klass, severity, title, fix, fn, fixer, inspect.getdoc(fn) or "")
        )
        return fn

    return wrap


def catalog(target: str | Target) -> list[Restriction]:
    """The restrictions of ``target`` (empty for a target without a catalog)."""
    name = target.name if isinstance(target, Target) else target
    try:
        importlib.import_module(f"nerve.compiler.catalog.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"nerve.compiler.catalog.{name}":
            raise
    return sorted(_CATALOGS.get(name, []), key=lambda r: r.code)


def fixers(target: str | Target) -> list[tuple[str, Fixer]]:
    """(code, fixer) for every fixable restriction of ``target``, in catalog order."""
    return [(r.code, r.fixer) for r in catalog(target) if r.fixer is not None]


# ---- what a check sees ----------------------------------------------------------------------


@dataclass
class Program:
    """One program the target's engine would compile: a segment with its I/O and weights."""

    nodes: list[Node]
    inputs: list[str]  # runtime tensors it reads (graph inputs, other segments' outputs)
    outputs: list[str]  # tensors it hands back (graph outputs, values other segments read)
    weights: list[str]  # weight tensors it embeds (Params and non-scalar float constants)


@dataclass
class CheckContext:
    """The graph under check, the target, placements made by fixes, and derived views."""

    graph: Graph
    target: Target
    placement: Mapping[str, str] = field(default_factory=dict)
    supported: KernelQuery | None = None

    @cached_property
    def engines(self) -> dict[str, str]:
        """node name -> engine it would run on."""
        from nerve.compiler.passes.plan import assign_engines

        engines, _ = assign_engines(self.graph, self.target, dict(self.placement))
        return {n.name: e for n, e in zip(self.graph.nodes, engines)}

    def on_target(self, node: Node) -> bool:
        """Whether ``node`` stays on the target's own engine (not placed on host)."""
        return self.placement.get(node.name, self.target.engine) == self.target.engine

    def target_nodes(self) -> Iterator[Node]:
        """Nodes the target's engine is meant to run (all but those fixes sent elsewhere)."""
        return (n for n in self.graph.nodes if self.on_target(n))

    @cached_property
    def segments(self) -> list[Segment]:
        from nerve.compiler.passes.plan import segments_of

        return segments_of(self.graph, [self.engines[n.name] for n in self.graph.nodes])

    @cached_property
    def programs(self) -> list[Program]:
        """The segments on the target's engine, with their I/O surfaces and weights."""
        g = self.graph
        readers: dict[str, set[int]] = {}
        for s in self.segments:
            for node in s.nodes:
                for i in node.inputs:
                    readers.setdefault(i, set()).add(s.index)
        outputs = set(g.output_names)
        result = []
        for s in self.segments:
            if s.engine != self.target.engine:
                continue
            produced = [o for n in s.nodes for o in n.outputs if o]
            ins = [i for i in s.inputs if i not in g.constants and i not in g.params]
            outs = [o for o in produced if o in outputs or readers.get(o, set()) - {s.index}]
            weights = [i for i in s.inputs if i in g.params or (
                i in g.constants and g.types[i].dtype.is_float and g.constants[i].size > 1)]
            result.append(Program(s.nodes, ins, outs, weights))
        return result


def evaluate_catalog(
    graph: Graph,
    target: str | Target,
    placement: Mapping[str, str] | None = None,
    supported: KernelQuery | None = None,
) -> list[Diagnostic]:
    """Run ``target``'s catalog over ``graph``; diagnostics in catalog order."""
    tgt = get_target(target)
    ctx = CheckContext(graph, tgt, placement or {}, supported)
    found: dict[tuple[str, str | None, str | None], Diagnostic] = {}
    for r in catalog(tgt):
        for d in r.check(ctx, r):
            found.setdefault(d.key(), d)  # a tensor between two programs is reported once
    return list(found.values())


def format_diagnostics(diagnostics: Iterable[Diagnostic], *, indent: str = "  ") -> str:
    lines = []
    for d in diagnostics:
        lines.append(f"{indent}{d.severity.upper():<7} {d.code}  {d.where}: {d.message}")
        tag = " (fixable with --fix)" if d.fixable else ""
        lines.append(f"{indent}        fix: {d.fix}{tag}")
    return "\n".join(lines)


__all__ = [
    "CLASSES",
    "COMPILATION_LIMITS",
    "GRAPH_STRUCTURE",
    "MEMORY_LAYOUT",
    "NUMERICAL",
    "OPERATOR_SUPPORT",
    "RESOURCE_LIMITS",
    "SEVERITIES",
    "WEIGHT_HANDLING",
    "CheckContext",
    "Diagnostic",
    "Program",
    "Restriction",
    "catalog",
    "evaluate_catalog",
    "fixers",
    "format_diagnostics",
    "restriction",
]
