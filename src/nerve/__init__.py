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
from nerve.runtime import Program, TensorInfo, compile

__all__ = [
    "CompileError",
    "InputError",
    "ModelFormatError",
    "NerveError",
    "Program",
    "ShapeError",
    "TensorInfo",
    "UnboundDimensionError",
    "UnsupportedOperatorError",
    "__version__",
    "compile",
    "errors",
    "ir",
]
