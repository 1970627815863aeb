"""The runtime: compiled Programs and how they run."""

from nerve.runtime.budget import compile_count
from nerve.runtime.cache import ProgramCache
from nerve.runtime.compile import compile, load_graph
from nerve.runtime.delta import UpdateReport
from nerve.runtime.monitor import Profiler
from nerve.runtime.program import Binding, Program, TensorInfo
from nerve.runtime.scheduler import Job, Runtime
from nerve.runtime.serialize import load_program as load
from nerve.runtime.tensors import SharedTensor
from nerve.runtime.worker import Client, Worker, connect

__all__ = [
    "Binding",
    "Client",
    "Job",
    "Profiler",
    "Program",
    "ProgramCache",
    "Runtime",
    "SharedTensor",
    "TensorInfo",
    "UpdateReport",
    "Worker",
    "compile",
    "compile_count",
    "connect",
    "load",
    "load_graph",
]
