"""Convolution, pooling, normalization, resizing: the spatial network ops."""

from __future__ import annotations

import onnx

from nerve.frontend.onnx.context import ImportContext
from nerve.frontend.onnx.registry import importer

__all__ = ["ImportContext", "importer", "onnx"]
