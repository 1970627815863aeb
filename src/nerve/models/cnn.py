"""A small residual CNN built in code: conv/BN/ReLU stem, max-pool, one residual block, a
strided conv, global average pool and a fully connected classifier.

>>> model = build_cnn(seed=0)
>>> sorted({n.op_type for n in model.graph.node})[:4]
['Add', 'BatchNormalization', 'Conv', 'Flatten']
"""

from __future__ import annotations

import numpy as np
import onnx

from nerve.frontend.builder import Builder, Tensor
from nerve.models._weights import normal as _normal


def _conv(
    b: Builder,
    rng: np.random.Generator,
    name: str,
    x: Tensor,
    c_in: int,
    c_out: int,
    *,
    kernel: int = 3,
    stride: int = 1,
    bias: bool = True,
) -> Tensor:
    """A same-padded convolution with He-initialised weights."""
    scale = np.sqrt(2.0 / (c_in * kernel * kernel))
    w = b.param(f"{name}.weight", _normal(rng, (c_out, c_in, kernel, kernel), scale))
    bias_t = b.param(f"{name}.bias", _normal(rng, (c_out,), 0.1)) if bias else None
    pad = kernel // 2
    return b.op(
        "Conv",
        x,
        w,
        bias_t,
        name=name,
        kernel_shape=[kernel, kernel],
        strides=[stride, stride],
        pads=[pad, pad, pad, pad],
    )


def _batchnorm(b: Builder, rng: np.random.Generator, name: str, x: Tensor, c: int) -> Tensor:
    """Inference-mode BatchNormalization with non-trivial statistics."""
    scale = b.param(f"{name}.weight", (rng.random(c) + 0.5).astype(np.float32))
    bias = b.param(f"{name}.bias", _normal(rng, (c,), 0.1))
    mean = b.param(f"{name}.running_mean", _normal(rng, (c,), 0.1))
    var = b.param(f"{name}.running_var", (rng.random(c) + 0.5).astype(np.float32))
    return b.op("BatchNormalization", x, scale, bias, mean, var, name=name, epsilon=1e-5)


def build_cnn(
    seed: int = 0, *, batch: int = 1, channels: int = 8, image: int = 16, classes: int = 10
) -> onnx.ModelProto:
    """The CNN as an ONNX model with input ``image`` (batch, 3, image, image) and output
    ``logits`` (batch, classes); weights are drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    b = Builder("cnn")
    x = b.input("image", "float32", (batch, 3, image, image))
    c, c2 = channels, 2 * channels

    with b.scope("stem"):
        y = _conv(b, rng, "conv", x, 3, c, bias=False)
        y = b.op("Relu", _batchnorm(b, rng, "bn", y, c))
        y = b.op("MaxPool", y, kernel_shape=[2, 2], strides=[2, 2])

    with b.scope("block"):
        skip = y
        y = b.op("Relu", _batchnorm(b, rng, "bn1", _conv(b, rng, "conv1", y, c, c), c))
        y = _batchnorm(b, rng, "bn2", _conv(b, rng, "conv2", y, c, c), c)
        y = b.op("Relu", b.op("Add", y, skip))

    with b.scope("down"):
        y = b.op("Relu", _conv(b, rng, "conv", y, c, c2, stride=2))

    with b.scope("head"):
        y = b.op("Flatten", b.op("GlobalAveragePool", y), axis=1)
        w = b.param("fc.weight", _normal(rng, (classes, c2), np.sqrt(1.0 / c2)))
        bias = b.param("fc.bias", _normal(rng, (classes,), 0.1))
        logits = b.op("Gemm", y, w, bias, transB=1)
    b.output(logits, name="logits")
    return b.to_onnx()


def cnn_inputs(
    seed: int = 0, *, batch: int = 1, image: int = 16, **_: object
) -> dict[str, np.ndarray]:
    """A random image batch for :func:`build_cnn` with the same sizes."""
    rng = np.random.default_rng(seed + 1_000)
    return {"image": rng.standard_normal((batch, 3, image, image)).astype(np.float32)}
