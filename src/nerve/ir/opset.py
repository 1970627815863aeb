"""The IR's op set.

IR nodes in the ONNX domain carry the semantics of the *latest* ONNX opset known to the installed
onnx package (``ONNX_OPSET``): the frontend's importers rewrite older forms (e.g. ``axes`` as an
attribute of ReduceMean before opset 18) into that canonical form, so kernels and passes handle
one form per op. Type and shape rules of ONNX-domain ops come from ONNX's own C++ inference
(:mod:`nerve.ir.infer`); ops in the ``nerve`` domain (fused ops created by the compiler) register
their rules here with :func:`register_op`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import onnx.defs

from nerve.ir.types import TensorType

ONNX_OPSET: int = onnx.defs.onnx_opset_version()

# (node, input types, constant input values) -> output types
InferFn = Callable[..., list[TensorType]]


@dataclass(frozen=True)
class OpDef:
    """A nerve-domain op: its name, a one-line meaning, and its type rule."""

    name: str
    doc: str
    infer: InferFn


NERVE_OPS: dict[str, OpDef] = {}


def register_op(name: str, doc: str) -> Callable[[InferFn], InferFn]:
    """Register a nerve-domain op and its type rule.

    >>> from nerve.ir.opset import register_op, NERVE_OPS
    >>> @register_op("Example", "returns its input")
    ... def _infer(node, types, consts):
    ...     return [types[0]]
    >>> "Example" in NERVE_OPS
    True
    >>> del NERVE_OPS["Example"]
    """

    def wrap(fn: InferFn) -> InferFn:
        NERVE_OPS[name] = OpDef(name, doc, fn)
        return fn

    return wrap


def onnx_schema(op_type: str, domain: str = "") -> onnx.defs.OpSchema | None:
    """The latest ONNX schema of an op, or None when ONNX does not define it."""
    try:
        return onnx.defs.get_schema(op_type, ONNX_OPSET, domain)
    except onnx.defs.SchemaError:
        return None


def is_known(op_type: str, domain: str) -> bool:
    if domain == "nerve":
        return op_type in NERVE_OPS
    return onnx_schema(op_type, domain) is not None


ConstMap = Mapping[str, object]
