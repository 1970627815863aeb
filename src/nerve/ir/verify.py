"""Graph invariants: topological order, every name typed and defined once, no dangling values.

>>> from nerve.ir import Graph, verify
>>> verify(Graph("empty"))
"""

from __future__ import annotations

from nerve.errors import GraphError
from nerve.ir.graph import Graph
from nerve.ir.opset import is_known


def verify(graph: Graph, *, check_ops: bool = True) -> None:
    """Raise :class:`GraphError` naming the first broken invariant."""
    defined: set[str] = set()
    for v in graph.inputs:
        if v.name in defined:
            raise GraphError(f"graph input {v.name!r} is declared twice")
        if graph.types.get(v.name) != v.type:
            raise GraphError(f"graph input {v.name!r} disagrees with its declared type")
        defined.add(v.name)
    for name in list(graph.constants) + list(graph.params):
        if name in defined:
            raise GraphError(f"{name!r} is both a graph input and a constant/param")
        if name not in graph.types:
            raise GraphError(f"constant/param {name!r} has no type")
        defined.add(name)
    for name in graph.params:
        if name in graph.constants:
            raise GraphError(f"{name!r} is both a constant and a param")
        if name in graph.weights and tuple(graph.weights[name].shape) != graph.types[name].shape:
            raise GraphError(
                f"param {name!r}: data shape {graph.weights[name].shape} does not match its "
                f"type {graph.types[name]}"
            )
    names: set[str] = set()
    for node in graph.nodes:
        if node.name in names:
            raise GraphError(f"two nodes are named {node.name!r}")
        names.add(node.name)
        if check_ops and not is_known(node.op_type, node.domain):
            raise GraphError(f"node {node.name!r}: unknown op {node.qualified_op!r}")
        for inp in node.inputs:
            if inp and inp not in defined:
                raise GraphError(
                    f"node {node.name!r} ({node.op_type}) reads {inp!r}, which is not defined "
                    "before it (graph not in topological order, or a dangling value)"
                )
        for out in node.outputs:
            if not out:
                continue
            if out in defined:
                raise GraphError(f"node {node.name!r} redefines {out!r}")
            if out not in graph.types:
                raise GraphError(f"node {node.name!r}: output {out!r} has no type")
            defined.add(out)
    for v in graph.outputs:
        if v.name not in defined:
            raise GraphError(f"graph output {v.name!r} is never produced")
        if graph.types.get(v.name) != v.type:
            raise GraphError(f"graph output {v.name!r} disagrees with its declared type")
