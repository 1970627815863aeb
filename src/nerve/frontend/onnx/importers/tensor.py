"""Shape and data movement: Reshape, Transpose, Concat, Gather, Slice, Pad, Cast, and more."""

from __future__ import annotations

import onnx

from nerve.frontend.onnx.context import ImportContext
from nerve.frontend.onnx.registry import importer

__all__ = ["ImportContext", "importer", "onnx"]
