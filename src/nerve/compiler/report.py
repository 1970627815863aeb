"""The CompileReport: what each pass did and what it cost."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PassRecord:
    name: str
    seconds: float
    nodes_in: int
    nodes_out: int
    rewrites: dict[str, int] = field(default_factory=dict)


@dataclass
class CompileReport:
    target: str
    passes: list[PassRecord] = field(default_factory=list)
    cache: str = "miss"  # "hit" | "miss" | "off"
    notes: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(p.seconds for p in self.passes)

    def format(self) -> str:
        lines = [f"compile report — target {self.target}, cache {self.cache}"]
        for p in self.passes:
            rw = ", ".join(f"{k}×{v}" for k, v in sorted(p.rewrites.items())) or "-"
            lines.append(
                f"  {p.name:<10} {p.seconds * 1e3:8.2f} ms  nodes {p.nodes_in:>5} -> "
                f"{p.nodes_out:<5} rewrites: {rw}"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
