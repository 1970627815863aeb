"""Targets are data: what an engine supports, its limits, its features.

>>> get_target("host").engine
'host'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nerve.errors import TargetError


@dataclass(frozen=True)
class Target:
    name: str
    engine: str
    description: str
    features: tuple[str, ...] = ()
    # Weights may be replaced after compile (delta compilation) on this target.
    mutable_weights: bool = True
    options: dict[str, object] = field(default_factory=dict)


HOST = Target("host", "host", "numpy kernels for every op: the oracle and the fallback")

TARGETS: dict[str, Target] = {t.name: t for t in (HOST,)}


def get_target(name: str | Target) -> Target:
    if isinstance(name, Target):
        return name
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(f"unknown target {name!r}; available: {', '.join(TARGETS)}") from None
