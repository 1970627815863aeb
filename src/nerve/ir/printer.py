"""A readable text form of a graph, one node a line.

>>> from nerve.ir import Graph, TensorType, DType, format_graph
>>> g = Graph("g"); g.add_input("x", TensorType(DType.FLOAT32, (2,))); g.set_outputs(["x"])
>>> print(format_graph(g).splitlines()[0])
graph g(x: float32[2]) -> (x: float32[2])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nerve.ir.graph import Graph


def _fmt_attr(v: Any) -> str:
    if isinstance(v, np.ndarray):
        if v.size <= 8:
            return f"tensor({v.tolist()})"
        return f"tensor<{v.dtype}{list(v.shape)}>"
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)


def format_graph(graph: Graph, *, max_nodes: int | None = None) -> str:
    sig_in = ", ".join(f"{v.name}: {v.type}" for v in graph.inputs)
    sig_out = ", ".join(f"{v.name}: {v.type}" for v in graph.outputs)
    lines = [f"graph {graph.name}({sig_in}) -> ({sig_out})"]
    for p in graph.params.values():
        lines.append(f"  param {p.name}: {p.type}")
    for name, c in graph.constants.items():
        shown = c.tolist() if c.size <= 8 else f"<{c.size} values>"
        lines.append(f"  const {name}: {graph.types[name]} = {shown}")
    nodes = graph.nodes if max_nodes is None else graph.nodes[:max_nodes]
    for node in nodes:
        outs = ", ".join(f"{o}: {graph.types[o]}" if o else "_" for o in node.outputs)
        ins = ", ".join(i or "_" for i in node.inputs)
        attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in sorted(node.attrs.items()))
        attrs = f" {{{attrs}}}" if attrs else ""
        lines.append(f"  {outs} = {node.qualified_op}({ins}){attrs}  # {node.name}")
    if max_nodes is not None and len(graph.nodes) > max_nodes:
        lines.append(f"  ... {len(graph.nodes) - max_nodes} more nodes")
    return "\n".join(lines)
