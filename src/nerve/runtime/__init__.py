"""The runtime: compiled Programs and how they run."""

from nerve.runtime.compile import compile, load_graph
from nerve.runtime.program import Program, TensorInfo

__all__ = ["Program", "TensorInfo", "compile", "load_graph"]
