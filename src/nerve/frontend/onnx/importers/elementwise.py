"""Elementwise arithmetic, math, activations, comparisons and logic."""

from __future__ import annotations

import onnx

from nerve.frontend.onnx.context import ImportContext
from nerve.frontend.onnx.registry import importer

# These import unchanged from every opset >= 13: their semantics did not change since, only
# their type lists.
_PASSTHROUGH = ("Relu", "Add", "Sub", "Mul", "Div")


@importer(*_PASSTHROUGH)
def import_unchanged(ctx: ImportContext, node: onnx.NodeProto) -> None:
    ctx.passthrough(node)
