"""The CompileReport: what each pass did and what it cost, and what the plan needs.

>>> r = CompileReport("host", passes=[PassRecord("fuse", 0.002, 10, 6, {"epilogue": 4})])
>>> print(r.format().splitlines()[1])
  fuse           2.00 ms  nodes    10 -> 6      rewrites: epilogue x4
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PassRecord:
    """One pass: wall time, node counts before and after, rewrites applied by name."""

    name: str
    seconds: float
    nodes_in: int
    nodes_out: int
    rewrites: dict[str, int] = field(default_factory=dict)

    @property
    def rewrite_count(self) -> int:
        return sum(self.rewrites.values())


@dataclass
class CompileReport:
    target: str
    passes: list[PassRecord] = field(default_factory=list)
    cache: str = "miss"  # "hit" | "miss" | "off"
    notes: list[str] = field(default_factory=list)
    # Memory plan: the arena the plan needs against the bytes of every intermediate.
    peak_scratch_bytes: int = 0
    intermediate_bytes: int = 0
    peak_live_bytes: int = 0
    intermediates: int = 0
    segments: list[tuple[str, int]] = field(default_factory=list)  # (engine, node count)
    bake_recipes: int = 0  # weight slots that need a transform (not plain Params)
    diagnostics: list[Any] = field(default_factory=list)  # restrictions.Diagnostic

    @property
    def total_seconds(self) -> float:
        return sum(p.seconds for p in self.passes)

    def rewrites(self) -> dict[str, int]:
        """Every rewrite of every pass, by name."""
        total: dict[str, int] = {}
        for p in self.passes:
            for k, v in p.rewrites.items():
                total[k] = total.get(k, 0) + v
        return total

    def format(self) -> str:
        lines = [f"compile report — target {self.target}, cache {self.cache}"]
        for p in self.passes:
            lines.append(_pass_line(p))
        lines.append(
            f"  total      {self.total_seconds * 1e3:8.2f} ms"
        )
        if self.segments:
            segs = ", ".join(f"{engine}:{n}" for engine, n in self.segments)
            lines.append(f"  segments: {len(self.segments)} ({segs})")
        if self.segments:
            saved = 1 - self.peak_scratch_bytes / self.intermediate_bytes \
                if self.intermediate_bytes else 0.0
            lines.append(
                f"  scratch arena: peak {self.peak_scratch_bytes:,} B vs {self.intermediate_bytes:,}"
                f" B for all {self.intermediates} intermediates ({saved:.0%} smaller; at least "
                f"{self.peak_live_bytes:,} B live at once)"
            )
        lines.append(f"  bake recipes: {self.bake_recipes} transformed weight slots")
        if self.diagnostics:
            counts = _severity_counts(self.diagnostics)
            lines.append(f"  restrictions: {counts}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "cache": self.cache,
            "passes": [
                {"name": p.name, "seconds": p.seconds, "nodes_in": p.nodes_in,
                 "nodes_out": p.nodes_out, "rewrites": dict(p.rewrites)}
                for p in self.passes
            ],
            "peak_scratch_bytes": self.peak_scratch_bytes,
            "intermediate_bytes": self.intermediate_bytes,
            "peak_live_bytes": self.peak_live_bytes,
            "intermediates": self.intermediates,
            "segments": [list(s) for s in self.segments],
            "bake_recipes": self.bake_recipes,
            "notes": list(self.notes),
        }


def _pass_line(p: PassRecord) -> str:
    rw = ", ".join(f"{k} x{v}" for k, v in sorted(p.rewrites.items()) if v) or "-"
    return (
        f"  {p.name:<10} {p.seconds * 1e3:8.2f} ms  nodes {p.nodes_in:>5} -> "
        f"{p.nodes_out:<5}  rewrites: {rw}"
    )


def _severity_counts(diagnostics: Sequence[Any]) -> str:
    counts: dict[str, int] = {}
    for d in diagnostics:
        counts[d.severity] = counts.get(d.severity, 0) + 1
    return ", ".join(f"{n} {sev}" for sev, n in sorted(counts.items()))
