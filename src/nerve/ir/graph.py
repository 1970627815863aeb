"""The graph IR: values, weights (Params), nodes, and the graph that holds them.

A Graph refers to tensors by name. Every name has a :class:`TensorType` in ``graph.types``.
Three kinds of named tensors feed nodes besides node outputs:

* graph **inputs** — supplied at run time;
* **constants** — structural values (shapes, axes, indices, small literals); their bytes are part
  of the structure and of the structural key;
* **Params** — weights. Their *data* lives in ``graph.weights``, apart from the structure, so two
  graphs that differ only in weights have the same structure and the same key.

>>> import numpy as np
>>> from nerve.ir import Graph, Node, TensorType, DType
>>> g = Graph("tiny")
>>> g.add_input("x", TensorType(DType.FLOAT32, (2, 3)))
>>> g.add_param("w", np.ones((3, 4), np.float32))
>>> _ = g.add_node(Node("MatMul", ["x", "w"], ["y"]), {"y": TensorType(DType.FLOAT32, (2, 4))})
>>> g.set_outputs(["y"])
>>> [n.op_type for n in g.nodes], list(g.params)
(['MatMul'], ['w'])
"""

from __future__ import annotations

import copy
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nerve.errors import GraphError
from nerve.ir.dtypes import DType
from nerve.ir.types import TensorType

# An attribute value after import: scalars, strings, tuples of them, or a numpy array.
AttrValue = Any

ONNX_DOMAIN = ""
NERVE_DOMAIN = "nerve"


@dataclass(frozen=True)
class Value:
    """A named tensor with its static type."""

    name: str
    type: TensorType

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype


@dataclass(frozen=True)
class Param:
    """A weight: a name and a type. Its data is held by the graph (or program), not here."""

    name: str
    type: TensorType


@dataclass
class Node:
    """One operation. ``inputs`` may contain ``""`` for an omitted optional input."""

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, AttrValue] = field(default_factory=dict)
    name: str = ""
    domain: str = ONNX_DOMAIN

    @property
    def qualified_op(self) -> str:
        return self.op_type if self.domain == ONNX_DOMAIN else f"{self.domain}.{self.op_type}"

    def attr(self, name: str, default: AttrValue = None) -> AttrValue:
        return self.attrs.get(name, default)

    def __repr__(self) -> str:
        return f"Node({self.qualified_op} {self.name!r}: {self.inputs} -> {self.outputs})"


def _unused_name(base: str, taken: Container[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first that is not ``taken``."""
    candidate, i = base, 0
    while candidate in taken:
        i += 1
        candidate = f"{base}_{i}"
    return candidate


class Graph:
    """A static-shape dataflow graph with nodes in topological order."""

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.types: dict[str, TensorType] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.params: dict[str, Param] = {}
        # Param data, deliberately kept apart from the structure above.
        self.weights: dict[str, np.ndarray] = {}
        self._node_names: set[str] = set()

    # ---- building -------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> None:
        self._declare(name, type)
        self.inputs.append(Value(name, type))

    def add_constant(self, name: str, value: np.ndarray, dtype: DType | None = None) -> None:
        array = np.asarray(value)
        dt = dtype or DType.from_numpy(array.dtype)
        self._declare(name, TensorType(dt, array.shape))
        array = array.copy()
        array.flags.writeable = False
        self.constants[name] = array

    def add_param(self, name: str, data: np.ndarray, dtype: DType | None = None) -> None:
        array = np.asarray(data)
        dt = dtype or DType.from_numpy(array.dtype)
        type_ = TensorType(dt, array.shape)
        self._declare(name, type_)
        self.params[name] = Param(name, type_)
        self.weights[name] = array

    def add_node(self, node: Node, output_types: Mapping[str, TensorType] | None = None) -> Node:
        if not node.name:
            node.name = self.unique_node_name(node.op_type)
        elif node.name in self._node_names:
            node.name = self.unique_node_name(node.name)
        self._node_names.add(node.name)
        for out, t in (output_types or {}).items():
            self._declare(out, t)
        self.nodes.append(node)
        return node

    def set_outputs(self, names: Iterable[str]) -> None:
        outs = []
        for n in names:
            if n not in self.types:
                raise GraphError(f"graph output {n!r} has no type; it is not produced anywhere")
            outs.append(Value(n, self.types[n]))
        self.outputs = outs

    def _declare(self, name: str, type_: TensorType) -> None:
        if not name:
            raise GraphError("tensor names must be non-empty")
        if name in self.types and self.types[name] != type_:
            raise GraphError(
                f"tensor {name!r} declared twice with different types: "
                f"{self.types[name]} and {type_}"
            )
        self.types[name] = type_

    def unique_node_name(self, base: str) -> str:
        return _unused_name(base, self._node_names)

    def unique_value_name(self, base: str) -> str:
        return _unused_name(base, self.types)

    # ---- queries --------------------------------------------------------------------------
    def value(self, name: str) -> Value:
        try:
            return Value(name, self.types[name])
        except KeyError:
            raise GraphError(f"no tensor named {name!r} in graph {self.name!r}") from None

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        result: dict[str, list[Node]] = {}
        for node in self.nodes:
            for inp in node.inputs:
                if inp:
                    result.setdefault(inp, []).append(node)
        return result

    def op_histogram(self) -> dict[str, int]:
        hist: dict[str, int] = {}
        for node in self.nodes:
            hist[node.qualified_op] = hist.get(node.qualified_op, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def copy(self, *, share_weights: bool = True) -> Graph:
        """A structural copy; weights are shared (not copied) unless asked."""
        g = Graph(self.name)
        g.inputs = list(self.inputs)
        g.outputs = list(self.outputs)
        g.nodes = [copy.copy(n) for n in self.nodes]
        for n in g.nodes:
            n.inputs, n.outputs, n.attrs = list(n.inputs), list(n.outputs), dict(n.attrs)
        g.types = dict(self.types)
        g.constants = dict(self.constants)
        g.params = dict(self.params)
        g.weights = (
            dict(self.weights) if share_weights else {k: v.copy() for k, v in self.weights.items()}
        )
        g._node_names = set(self._node_names)
        return g

    def remove_unused(self) -> None:
        """Drop constants, params and types no node or output refers to."""
        used = {i for n in self.nodes for i in n.inputs if i}
        used |= {o for n in self.nodes for o in n.outputs if o}
        used |= set(self.input_names) | set(self.output_names)
        for table in (self.constants, self.params, self.weights, self.types):
            for name in [k for k in table if k not in used]:
                del table[name]
        self._node_names = {n.name for n in self.nodes}

    def __repr__(self) -> str:
        return (
            f"Graph({self.name!r}, {len(self.nodes)} nodes, inputs={self.input_names}, "
            f"outputs={self.output_names}, {len(self.params)} params)"
        )
