"""The runtime: compiled Programs and how they run."""

from nerve.runtime.compile import compile, load_graph
from nerve.runtime.monitor import Profiler
from nerve.runtime.program import Binding, Program, TensorInfo
from nerve.runtime.scheduler import Job, Runtime
from nerve.runtime.tensors import SharedTensor
from nerve.runtime.worker import Client, Worker, connect

__all__ = [
    "Binding",
    "Client",
    "Job",
    "Profiler",
    "Program",
    "Runtime",
    "SharedTensor",
    "TensorInfo",
    "Worker",
    "compile",
    "connect",
    "load_graph",
]
