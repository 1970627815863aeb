"""A small MLP built in code: Gemm/ReLU, MatMul/Add/Tanh, Gemm, Softmax.

>>> model = build_mlp(seed=0)
>>> [n.op_type for n in model.graph.node]
['Gemm', 'Relu', 'MatMul', 'Add', 'Tanh', 'Gemm', 'Softmax']
"""

from __future__ import annotations

import numpy as np
import onnx

from nerve.frontend.builder import Builder
from nerve.models._weights import normal as _normal


def build_mlp(
    seed: int = 0, *, batch: int = 4, features: int = 16, hidden: int = 32, classes: int = 5
) -> onnx.ModelProto:
    """``x`` float32 (batch, features) -> ``probs`` float32 (batch, classes)."""
    rng = np.random.default_rng(seed)
    b = Builder("mlp")
    x = b.input("x", "float32", (batch, features))
    w1 = b.param("fc1.weight", _normal(rng, (hidden, features), np.sqrt(2.0 / features)))
    h = b.op(
        "Relu", b.op("Gemm", x, w1, b.param("fc1.bias", _normal(rng, (hidden,), 0.1)), transB=1)
    )
    w2 = b.param("fc2.weight", _normal(rng, (hidden, hidden), np.sqrt(1.0 / hidden)))
    h = b.op(
        "Tanh",
        b.op("Add", b.op("MatMul", h, w2), b.param("fc2.bias", _normal(rng, (hidden,), 0.1))),
    )
    w3 = b.param("fc3.weight", _normal(rng, (hidden, classes), np.sqrt(1.0 / hidden)))
    logits = b.op(
        "Gemm", h, w3, b.param("fc3.bias", _normal(rng, (classes,), 0.1)), alpha=0.5, beta=2.0
    )
    b.output(b.op("Softmax", logits, axis=-1), name="probs")
    return b.to_onnx()


def mlp_inputs(
    seed: int = 0, *, batch: int = 4, features: int = 16, **_: object
) -> dict[str, np.ndarray]:
    """A random batch for :func:`build_mlp` with the same sizes."""
    rng = np.random.default_rng(seed + 1_000)
    return {"x": rng.standard_normal((batch, features)).astype(np.float32)}
