"""Tiny IR graphs for the compiler tests, built op by op with inferred types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

import nerve
from nerve.ir import DType, Graph, Node, TensorType, infer_node


class IR:
    """An IR graph under construction: ``op`` infers each node's output types."""

    def __init__(self, name: str = "g") -> None:
        self.g = Graph(name)

    def input(self, name: str, shape: tuple[int, ...], dtype: DType = DType.FLOAT32) -> str:
        self.g.add_input(name, TensorType(dtype, shape))
        return name

    def param(self, name: str, value: np.ndarray) -> str:
        self.g.add_param(name, np.asarray(value))
        return name

    def const(self, name: str, value: Any) -> str:
        self.g.add_constant(name, np.asarray(value))
        return name

    def op(self, op_type: str, *inputs: str, name: str = "", domain: str = "",
           outputs: int = 1, **attrs: Any) -> str:
        return self.ops(op_type, *inputs, name=name, domain=domain, outputs=outputs, **attrs)[0]

    def ops(self, op_type: str, *inputs: str, name: str = "", domain: str = "",
            outputs: int = 1, **attrs: Any) -> list[str]:
        base = name or op_type.lower()
        outs = [self.g.unique_value_name(f"{base}_{i}") for i in range(outputs)]
        node = Node(op_type, list(inputs), outs, attrs, name, domain)
        types = infer_node(node, self.g.types, self.g.constants)
        self.g.add_node(node, {o: t for o, t in zip(outs, types) if t is not None})
        return outs

    def output(self, *names: str) -> Graph:
        self.g.set_outputs(names)
        return self.g


def ops(graph: Graph) -> list[str]:
    """The qualified op of every node, in order."""
    return [n.qualified_op for n in graph.nodes]


def run(graph: Graph, feeds: Mapping[str, np.ndarray], **options: Any) -> dict[str, np.ndarray]:
    """Compile ``graph`` for the host target with ``options`` and run it on ``feeds``."""
    return nerve.compile(graph, **options).run(dict(feeds))


def assert_fused_matches(graph: Graph, feeds: Mapping[str, np.ndarray], tol: float = 1e-5) -> None:
    """The fused and the unfused program give the same outputs within ``tol``."""
    fused = run(graph, feeds)
    plain = run(graph, feeds, fuse=False)
    for name in plain:
        np.testing.assert_allclose(fused[name], plain[name], rtol=tol, atol=tol)


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
