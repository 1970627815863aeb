"""``nerve check``: a porting checklist — every restriction a model breaks on a target.

The model is normalized (constant folding, no-op removal, canonical forms) and the target's
restriction catalog runs over it; with ``fix=True`` normalize first repairs what the catalog
can repair, and the report lists what was fixed apart from what remains.

>>> from nerve.ir import DType, Graph, Node, TensorType
>>> t = TensorType(DType.FLOAT32, (1, 768, 1, 64))
>>> g = Graph("g"); g.add_input("a", t); g.add_input("b", t)
>>> _ = g.add_node(Node("Concat", ["a", "b"], ["y"], {"axis": 1}),
...                {"y": TensorType(DType.FLOAT32, (1, 1536, 1, 64))})
>>> g.set_outputs(["y"])
>>> report = check_graph(g, "ane")
>>> [d.code for d in report.errors], report.exit_status
(['ANE-R01'], 1)
>>> check_graph(g, "ane", fix=True).fixed[0].code
'ANE-R01'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nerve.compiler.context import Evaluator, KernelQuery, PassContext
from nerve.compiler.passes.normalize import normalize
from nerve.compiler.restrictions import (
    CLASSES,
    ERROR,
    INFO,
    WARNING,
    Diagnostic,
    evaluate_catalog,
    format_diagnostics,
)
from nerve.compiler.targets import Target, get_target
from nerve.ir import Graph


@dataclass
class CheckReport:
    """The violations of one model on one target, grouped by class, plus what --fix fixed."""

    target: str
    model: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    fixed: list[Diagnostic] = field(default_factory=list)
    placed_on_host: list[str] = field(default_factory=list)

    def _of(self, severity: str) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == severity]

    @property
    def errors(self) -> list[Diagnostic]:
        return self._of(ERROR)

    @property
    def warnings(self) -> list[Diagnostic]:
        return self._of(WARNING)

    @property
    def infos(self) -> list[Diagnostic]:
        return self._of(INFO)

    @property
    def ok(self) -> bool:
        """No error-severity violation remains."""
        return not self.errors

    @property
    def exit_status(self) -> int:
        return 0 if self.ok else 1

    def by_class(self) -> dict[str, list[Diagnostic]]:
        groups: dict[str, list[Diagnostic]] = {k: [] for k in CLASSES}
        for d in self.diagnostics:
            groups.setdefault(d.klass, []).append(d)
        return {k: v for k, v in groups.items() if v}

    def summary(self) -> str:
        fixable = sum(1 for d in self.diagnostics if d.fixable)
        parts = [f"{len(self.errors)} errors", f"{len(self.warnings)} warnings",
                 f"{len(self.infos)} notes"]
        line = f"{self.model} on {self.target}: " + ", ".join(parts)
        if fixable:
            line += f" ({fixable} fixable with --fix)"
        if self.fixed:
            line += f"; fixed {len(self.fixed)}"
        return line

    def format(self) -> str:
        lines = [f"nerve check — model {self.model}, target {self.target}"]
        for klass, diags in self.by_class().items():
            lines.append(f"\n{klass} ({len(diags)})")
            lines.append(format_diagnostics(diags))
        if self.fixed:
            lines.append(f"\nfixed ({len(self.fixed)})")
            lines += [f"  {d.code}  {d.where}: {d.message}" for d in self.fixed]
        if self.placed_on_host:
            shown = ", ".join(self.placed_on_host[:8])
            more = f" and {len(self.placed_on_host) - 8} more" if len(self.placed_on_host) > 8 \
                else ""
            lines.append(f"\nrun on the host engine by the fixes: {shown}{more}")
        if not self.diagnostics and not self.fixed:
            lines.append("\nno restriction is violated")
        lines.append(f"\nsummary: {self.summary()}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "model": self.model,
            "ok": self.ok,
            "summary": {"errors": len(self.errors), "warnings": len(self.warnings),
                        "notes": len(self.infos), "fixed": len(self.fixed),
                        "fixable": sum(1 for d in self.diagnostics if d.fixable)},
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "fixed": [d.to_dict() for d in self.fixed],
            "placed_on_host": list(self.placed_on_host),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _diagnose(
    graph: Graph,
    target: Target,
    *,
    fix: bool,
    options: Mapping[str, Any] | None,
    evaluate: Evaluator | None,
    supported: KernelQuery | None,
) -> tuple[list[Diagnostic], dict[str, str]]:
    work = graph.copy()
    ctx = PassContext.new(work, target, {**(options or {}), "fix": fix},
                          evaluate=evaluate, supported=supported)
    normalize(work, ctx)
    return evaluate_catalog(work, target, ctx.placement, supported), dict(ctx.placement)


def check_graph(
    graph: Graph,
    target: str | Target = "host",
    *,
    fix: bool = False,
    options: Mapping[str, Any] | None = None,
    evaluate: Evaluator | None = None,
    supported: KernelQuery | None = None,
) -> CheckReport:
    """Check ``graph`` against ``target``'s restriction catalog (see the module docstring).

    ``evaluate`` (numeric constant folding) and ``supported`` (which ops have host kernels)
    come from the engines layer; without them the check folds shape math only and does not
    look for missing host kernels.
    """
    tgt = get_target(target)
    before, _ = _diagnose(graph, tgt, fix=False, options=options, evaluate=evaluate,
                          supported=supported)
    report = CheckReport(tgt.name, graph.name)
    if not fix:
        report.diagnostics = before
        return report
    after, placement = _diagnose(graph, tgt, fix=True, options=options, evaluate=evaluate,
                                 supported=supported)
    remaining = {d.key() for d in after}
    report.diagnostics = after
    report.fixed = [d for d in before if d.key() not in remaining and d.fixable]
    report.placed_on_host = sorted(n for n, e in placement.items() if e == "host")
    return report


__all__ = ["CheckReport", "check_graph"]
