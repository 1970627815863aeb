"""MatMul, Gemm, Einsum and other linear algebra."""

from __future__ import annotations

import onnx

from nerve.frontend.onnx.context import ImportContext
from nerve.frontend.onnx.registry import importer

__all__ = ["ImportContext", "importer", "onnx"]
