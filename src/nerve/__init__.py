"""nerve — a neural engine runtime for Python.

>>> import nerve
>>> isinstance(nerve.__version__, str)
True
"""

from nerve import errors, ir
from nerve._version import __version__
from nerve.errors import (
    CompileError,
    InputError,
    ModelFormatError,
    NerveError,
    ShapeError,
    UnboundDimensionError,
    UnsupportedOperatorError,
)
from nerve.runtime import (
    Binding,
    Job,
    Profiler,
    Program,
    Runtime,
    SharedTensor,
    TensorInfo,
    Worker,
    compile,
    connect,
    load,
)
from nerve.runtime.compile import check
from nerve.runtime.quant import AccuracyReport, Calibration, accuracy, calibrate

__all__ = [
    "AccuracyReport",
    "Binding",
    "Calibration",
    "CompileError",
    "InputError",
    "Job",
    "ModelFormatError",
    "NerveError",
    "Profiler",
    "Program",
    "Runtime",
    "ShapeError",
    "SharedTensor",
    "TensorInfo",
    "UnboundDimensionError",
    "UnsupportedOperatorError",
    "Worker",
    "__version__",
    "accuracy",
    "calibrate",
    "check",
    "compile",
    "connect",
    "errors",
    "ir",
    "load",
]
