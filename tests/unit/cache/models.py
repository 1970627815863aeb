"""Models for the cache and delta tests: the built-in CNN (BatchNorm folded into its convs,
a transposed Gemm weight) and transformer block, each buildable with different weights."""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from nerve.frontend.onnx import load_onnx
from nerve.models.cnn import build_cnn, cnn_inputs
from nerve.models.transformer import build_transformer, transformer_inputs

MODELS = {
    "cnn": (build_cnn, cnn_inputs),
    "transformer": (build_transformer, transformer_inputs),
}


def weights_of(model: ModelProto) -> dict[str, np.ndarray]:
    """The model's Params as nerve imports them (name -> array)."""
    return dict(load_onnx(model).weights)


def add_weight(size: int = 4, value: float = 0.0, name: str = "add_w") -> ModelProto:
    """y = x + w, z = Relu(x) — a model whose output shows which w a run used."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"]), helper.make_node("Relu", ["x"], ["z"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [size])],
        [numpy_helper.from_array(np.full(size, value, np.float32), "w"),
         numpy_helper.from_array(np.ones(size, np.float32), "unused")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


__all__ = ["MODELS", "add_weight", "build_cnn", "build_transformer", "cnn_inputs",
           "transformer_inputs", "weights_of"]
