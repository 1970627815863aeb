"""The state one compile carries from pass to pass.

A :class:`PassContext` holds the target, the options, the bake book (weight transforms written
so far), node placements forced by fixes (a node the target cannot run, sent to ``host``),
tensor layouts, the optional numeric evaluator used for constant folding, and the record of
the pass running now (where rewrites are counted).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nerve.compiler.bake import BakeBook
from nerve.compiler.report import PassRecord
from nerve.compiler.targets import Target
from nerve.ir import Graph, Node

# evaluate(node, *inputs) -> one array per output: runs an op numerically (constant folding).
# The compiler takes it as a parameter because engines sit above the compiler.
Evaluator = Callable[..., list[np.ndarray]]

# supported(op_type, domain) -> whether the host engine has a kernel for the op.
KernelQuery = Callable[[str, str], bool]

DEFAULT_OPTIONS: Mapping[str, Any] = {
    "fuse": True,  # run the fusion rewrites
    "fold_constants": True,
    "fold_max_elements": 1 << 16,  # folded tensors larger than this stay nodes
    "fix": True,  # let normalize repair fixable restrictions of the target
    "check": True,  # run the restriction catalog; errors stop the compile
    "fallback": True,  # nodes the target cannot run go to the host engine
    "precision": None,  # the target's default policy
    "in_place": True,  # let the memory plan reuse an input's bytes for an elementwise output
}


@dataclass
class PassContext:
    """Everything a pass may read or record besides the graph."""

    target: Target
    options: dict[str, Any]
    book: BakeBook
    evaluate: Evaluator | None = None
    supported: KernelQuery | None = None
    record: PassRecord = field(default_factory=lambda: PassRecord("", 0.0, 0, 0))
    # node name -> engine, for nodes a fix sent off the target (e.g. Concat on the ANE).
    placement: dict[str, str] = field(default_factory=dict)
    layouts: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def new(
        graph: Graph,
        target: Target,
        options: Mapping[str, Any] | None = None,
        *,
        evaluate: Evaluator | None = None,
        supported: KernelQuery | None = None,
    ) -> PassContext:
        opts = {**DEFAULT_OPTIONS, **(options or {})}
        return PassContext(target, opts, BakeBook(graph), evaluate, supported)

    def option(self, name: str) -> Any:
        return self.options.get(name, DEFAULT_OPTIONS.get(name))

    def count(self, rewrite: str, n: int = 1) -> None:
        """Count ``n`` applications of the rewrite ``rewrite`` in the current pass."""
        if n:
            self.record.rewrites[rewrite] = self.record.rewrites.get(rewrite, 0) + n

    def placed(self, node: Node) -> bool:
        """Whether a fix pinned ``node`` to an engine (such nodes are not fused away)."""
        return node.name in self.placement
