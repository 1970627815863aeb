"""Lower a segment's nodes to steps (see ``lowering`` for the fusion rules).

The lowering is split by concern: ``lowering`` (bookkeeping, dispatch, elementwise chains),
``lower_gemm`` (MatMul, Gemm, Conv, Attention) and ``lower_ops`` (pooling, normalisation,
reductions, data movement). Importing this module registers every builder.
"""

from __future__ import annotations

from nerve.engines.native import lower_gemm as lower_gemm
from nerve.engines.native import lower_ops as lower_ops
from nerve.engines.native.lowering import BUILDERS, MAIN, Lowering

__all__ = ["BUILDERS", "MAIN", "Lowering"]
