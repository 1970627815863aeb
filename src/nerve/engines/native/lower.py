"""Lower a segment's nodes to steps (see ``lowering`` for the fusion rules).

The lowering is split by concern: ``lowering`` (bookkeeping, dispatch, elementwise chains),
``lower_gemm`` (MatMul, Gemm, Conv, Attention), ``lower_bf16`` (their bf16-operand forms),
``lower_int8`` (the int8 ops) and ``lower_ops`` (pooling, normalisation, reductions, data
movement). Importing this module registers every builder.
"""

from __future__ import annotations

from nerve.engines.native import lower_bf16 as lower_bf16
from nerve.engines.native import lower_gemm as lower_gemm
from nerve.engines.native import lower_int8 as lower_int8
from nerve.engines.native import lower_ops as lower_ops
from nerve.engines.native.lowering import BUILDERS, MAIN, Lowering

__all__ = ["BUILDERS", "MAIN", "Lowering"]
