"""Importer families; importing this package registers every importer.

One module per family of ops; inside it, one small function per op (or one registration for
ops that import unchanged).
"""

from nerve.frontend.onnx.importers import (  # noqa: F401
    elementwise,
    linalg,
    nn,
    quant,
    reduce,
    tensor,
)
