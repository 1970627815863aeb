"""Tiny models for the runtime tests, built from simple ops."""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

import nerve

OPSET = [helper.make_opsetid("", 17)]


def affine_relu(features: int = 4, batch: int | None = None, name: str = "affine") -> ModelProto:
    """y = Relu(x * w + b) with per-feature w, b; x is [features] or [batch, features]."""
    shape = [features] if batch is None else [batch, features]
    w = np.linspace(-1.0, 1.0, features, dtype=np.float32)
    b = np.linspace(0.5, -0.5, features, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "w"], ["m"], name="mul"),
            helper.make_node("Add", ["m", "b"], ["a"], name="add"),
            helper.make_node("Relu", ["a"], ["y"], name="relu"),
        ],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def affine_program(features: int = 4, batch: int | None = None) -> nerve.Program:
    return nerve.compile(affine_relu(features, batch))


def passthrough(shape: list[int]) -> ModelProto:
    """A graph whose output is its input (no nodes)."""
    graph = helper.make_graph(
        [],
        "passthrough",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def weight_output() -> ModelProto:
    """Outputs y = Relu(x) and the weight w itself."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "weight_out",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3]),
        ],
        [numpy_helper.from_array(np.arange(3, dtype=np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def linear(batch: int, k: int = 16, n: int = 8) -> ModelProto:
    """y = Relu(x @ w): MatMul, for batching with a reduction inside each row."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
            helper.make_node("Relu", ["m"], ["y"], name="relu"),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=OPSET)
