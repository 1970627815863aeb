"""A tiny pre-norm transformer block built in code: token embedding (Gather) plus learned
positions, LayerNorm, multi-head self-attention with Softmax, a GELU MLP, residuals, and a
final LayerNorm.

>>> model = build_transformer(seed=0)
>>> [i.name for i in model.graph.input], [o.name for o in model.graph.output]
(['input_ids'], ['hidden'])
"""

from __future__ import annotations

import numpy as np
import onnx

from nerve.frontend.builder import Builder, Tensor
from nerve.models._weights import normal as _normal


def _linear(
    b: Builder, rng: np.random.Generator, name: str, x: Tensor, d_in: int, d_out: int
) -> Tensor:
    w = b.param(f"{name}.weight", _normal(rng, (d_in, d_out), np.sqrt(1.0 / d_in)))
    bias = b.param(f"{name}.bias", _normal(rng, (d_out,), 0.02))
    return b.op("Add", b.op("MatMul", x, w, name=name), bias)


def _layernorm(b: Builder, rng: np.random.Generator, name: str, x: Tensor, d: int) -> Tensor:
    scale = b.param(f"{name}.weight", (1.0 + _normal(rng, (d,), 0.1)).astype(np.float32))
    bias = b.param(f"{name}.bias", _normal(rng, (d,), 0.1))
    return b.op("LayerNormalization", x, scale, bias, name=name, axis=-1, epsilon=1e-5)


def _attention(
    b: Builder, rng: np.random.Generator, x: Tensor, batch: int, seq: int, dim: int, heads: int
) -> Tensor:
    head_dim = dim // heads
    split = b.const([batch, seq, heads, head_dim], name="split_shape")
    q, k, v = (
        b.op("Reshape", _linear(b, rng, part, x, dim, dim), split) for part in ("q", "k", "v")
    )
    q = b.op("Transpose", q, perm=[0, 2, 1, 3])  # (batch, heads, seq, head_dim)
    k = b.op("Transpose", k, perm=[0, 2, 3, 1])  # (batch, heads, head_dim, seq)
    v = b.op("Transpose", v, perm=[0, 2, 1, 3])
    scores = b.op("Mul", b.op("MatMul", q, k), float(1.0 / np.sqrt(head_dim)))
    probs = b.op("Softmax", scores, axis=-1)
    context = b.op("Transpose", b.op("MatMul", probs, v), perm=[0, 2, 1, 3])
    merged = b.op("Reshape", context, b.const([batch, seq, dim], name="merge_shape"))
    return _linear(b, rng, "out", merged, dim, dim)


def build_transformer(
    seed: int = 0,
    *,
    batch: int = 1,
    seq: int = 8,
    vocab: int = 64,
    dim: int = 32,
    heads: int = 4,
    mlp: int = 64,
) -> onnx.ModelProto:
    """The block as an ONNX model: ``input_ids`` int64 (batch, seq) -> ``hidden`` float32
    (batch, seq, dim); weights are drawn from ``seed``."""
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
    rng = np.random.default_rng(seed)
    b = Builder("transformer")
    ids = b.input("input_ids", "int64", (batch, seq))

    with b.scope("embed"):
        table = b.param("tokens", _normal(rng, (vocab, dim), 1.0))
        positions = b.param("positions", _normal(rng, (seq, dim), 0.1))
        x = b.op("Add", b.op("Gather", table, ids, axis=0), positions)

    with b.scope("attn"):
        h = _layernorm(b, rng, "norm", x, dim)
        x = b.op("Add", x, _attention(b, rng, h, batch, seq, dim, heads))

    with b.scope("mlp"):
        h = _layernorm(b, rng, "norm", x, dim)
        h = b.op("Gelu", _linear(b, rng, "up", h, dim, mlp))
        x = b.op("Add", x, _linear(b, rng, "down", h, mlp, dim))

    b.output(_layernorm(b, rng, "final_norm", x, dim), name="hidden")
    return b.to_onnx()


def transformer_inputs(
    seed: int = 0, *, batch: int = 1, seq: int = 8, vocab: int = 64, **_: object
) -> dict[str, np.ndarray]:
    """Random token ids for :func:`build_transformer` with the same sizes."""
    rng = np.random.default_rng(seed + 1_000)
    return {"input_ids": rng.integers(0, vocab, size=(batch, seq), dtype=np.int64)}
