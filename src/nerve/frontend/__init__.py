"""Frontends turn models (ONNX, PyTorch, Python builders) into :class:`nerve.ir.Graph`."""

from nerve.frontend.onnx import load_onnx

__all__ = ["load_onnx"]
