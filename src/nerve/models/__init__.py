"""Reference networks built in code with :mod:`nerve.frontend.builder`.

Each entry of :data:`MODELS` builds an ``onnx.ModelProto`` with seeded random weights and
makes matching example inputs; ``nerve demo`` and the tests use them.

>>> spec = MODELS["mlp"]
>>> model, feeds = spec.build(seed=0), spec.inputs(seed=0)
>>> [i.name for i in model.graph.input] == list(feeds)
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from nerve.models.cnn import build_cnn, cnn_inputs
from nerve.models.mlp import build_mlp, mlp_inputs
from nerve.models.transformer import build_transformer, transformer_inputs


@dataclass(frozen=True)
class ModelSpec:
    """A built-in model: ``build(seed=, **sizes)`` and ``inputs(seed=, **sizes)``."""

    name: str
    summary: str
    build: Callable[..., onnx.ModelProto]
    inputs: Callable[..., dict[str, np.ndarray]]


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("cnn", "residual CNN: conv/bn/relu/pool/residual/gemm", build_cnn, cnn_inputs),
        ModelSpec(
            "transformer",
            "transformer block: embedding gather, layernorm, attention, GELU MLP",
            build_transformer,
            transformer_inputs,
        ),
        ModelSpec("mlp", "MLP: gemm/relu/matmul/tanh/softmax", build_mlp, mlp_inputs),
    )
}

# What `nerve demo` runs by default.
DEMO_MODELS = ("cnn", "transformer")

__all__ = [
    "DEMO_MODELS",
    "MODELS",
    "ModelSpec",
    "build_cnn",
    "build_mlp",
    "build_transformer",
    "cnn_inputs",
    "mlp_inputs",
    "transformer_inputs",
]
