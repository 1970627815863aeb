"""The structural key: a hash of everything about a graph except its weights' values.

It covers ops, domains, attributes, topology, tensor types, constant values, Param names and
types, graph inputs and outputs, and whatever the caller adds (target, features, options,
nerve's version). Two models that differ only in weight values share a key, and so share one
compiled program; any other difference gives another key.

Value names are canonicalised (numbered in order of first appearance) so renaming an
intermediate tensor does not change the key, while Param names stay verbatim — they are the
handles weight updates use.

>>> import numpy as np
>>> from nerve.ir import Graph, Node, TensorType, DType, structural_key
>>> def model(w):
...     g = Graph("m")
...     g.add_input("x", TensorType(DType.FLOAT32, (1, 2)))
...     g.add_param("w", w)
...     g.add_node(Node("MatMul", ["x", "w"], ["y"]), {"y": TensorType(DType.FLOAT32, (1, 2))})
...     g.set_outputs(["y"])
...     return g
>>> structural_key(model(np.ones((2, 2), np.float32))) == structural_key(model(np.zeros((2, 2), np.float32)))
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from nerve._version import __version__
from nerve.ir.graph import Graph


def _attr_token(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ["ndarray", str(value.dtype), list(value.shape), hashlib.sha256(
            np.ascontiguousarray(value).tobytes()).hexdigest()]
    if isinstance(value, (list, tuple)):
        return [_attr_token(v) for v in value]
    if isinstance(value, float):
        return ["f", value.hex()]  # exact, and distinct from the int with the same value
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, bytes):
        return ["b", value.hex()]
    return ["repr", repr(value)]


def structural_description(graph: Graph) -> dict[str, Any]:
    """The JSON-able structure the key hashes; useful to diff two graphs' structures."""
    canon: dict[str, str] = {}

    def name_of(n: str) -> str:
        if not n:
            return ""
        if n in graph.params or n in graph.input_names or n in graph.output_names:
            return n  # external handles keep their names
        if n not in canon:
            canon[n] = f"%{len(canon)}"
        return canon[n]

    def type_of(n: str) -> str:
        return str(graph.types[n])

    desc: dict[str, Any] = {
        "inputs": [[v.name, str(v.type)] for v in graph.inputs],
        "params": sorted([p.name, str(p.type)] for p in graph.params.values()),
        "constants": {},
        "nodes": [],
        "outputs": [[v.name, str(v.type)] for v in graph.outputs],
    }
    def add_constant(name: str) -> None:
        if name in graph.constants and name_of(name) not in desc["constants"]:
            c = graph.constants[name]
            desc["constants"][name_of(name)] = [
                str(c.dtype), list(c.shape),
                hashlib.sha256(np.ascontiguousarray(c).tobytes()).hexdigest()
                if c.dtype != object else repr(c.tolist()),
            ]

    for node in graph.nodes:
        for inp in node.inputs:
            add_constant(inp)
        desc["nodes"].append([
            node.domain, node.op_type,
            [name_of(i) for i in node.inputs],
            [[name_of(o), type_of(o)] if o else "" for o in node.outputs],
            {k: _attr_token(v) for k, v in sorted(node.attrs.items())},
        ])
    # A graph output may itself be a constant (a fully folded graph): its value is structure.
    for v in graph.outputs:
        add_constant(v.name)
    return desc


def structural_key(graph: Graph, extra: Mapping[str, Any] | None = None) -> str:
    """A hex SHA-256 of the graph's structure plus ``extra`` (target, features, options)."""
    payload = {
        "nerve": __version__,
        "graph": structural_description(graph),
        "extra": {k: _attr_token(v) if not isinstance(v, Mapping) else dict(v)
                  for k, v in sorted((extra or {}).items())},
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()
