"""Reductions, ArgMax/ArgMin, Softmax family, CumSum, TopK."""

from __future__ import annotations

import onnx

from nerve.frontend.onnx.context import ImportContext
from nerve.frontend.onnx.registry import importer

__all__ = ["ImportContext", "importer", "onnx"]
