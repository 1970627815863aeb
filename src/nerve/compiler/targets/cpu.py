"""The ``cpu`` target: the native engine (generated C + BLAS; AMX tiles where present).

ISA features are detected when the target is first used, from the ``flags`` line of
``/proc/cpuinfo`` on Linux: the ones nerve cares about are listed in :data:`FEATURES`.
Precision policies that need a feature (bf16) are refused on machines without it.

>>> t = target(features=("avx2", "avx512f"))
>>> t.engine, t.features
('native', ('avx2', 'avx512f'))
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from nerve.compiler.targets import (
    BF16_FEATURES,
    BF16_OPERANDS,
    FP32,
    INT8_FEATURES,
    INT8_OPERANDS,
    LayoutRules,
    Limits,
    OpRule,
    Target,
    auto_policy,
)
from nerve.ir import DType, Graph, Node
from nerve.ir.fused_ops import OPERANDS

# The ISA features nerve's native engine can use, in the order reports list them.
FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")

# bf16 / int8 operands with fp32 / int32 accumulation on matmul and conv (see PrecisionPolicy).
BF16 = replace(BF16_OPERANDS, requires_any=BF16_FEATURES)
INT8 = replace(INT8_OPERANDS, requires_any=INT8_FEATURES)

_F32 = frozenset({DType.FLOAT32, DType.BOOL})  # compute in float32 (bool: Where's condition)
_ANY = frozenset(DType) - {DType.STRING}

# The native engine's ops (mirrors nerve.engines.native.claims, which decides each node
# precisely; this table routes nodes to it). Everything else falls back to the host engine.
_COMPUTE = (
    # elementwise maps, fused into one loop per chain and into GEMM epilogues
    "Abs", "Ceil", "Celu", "Cos", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid",
    "HardSwish", "LeakyRelu", "Log", "Mish", "Neg", "Reciprocal", "Relu", "Round", "Selu",
    "Shrink", "Sigmoid", "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Swish", "Tanh",
    "ThresholdedRelu", "Add", "Sub", "Mul", "Div", "Pow", "PRelu", "Max", "Min", "Sum", "Mean",
    "Clip", "Where", "BatchNormalization",
    # GEMM-class, pooling, normalisation, reductions
    "MatMul", "Gemm", "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Softmax", "LogSoftmax", "LayerNormalization", "RMSNormalization",
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    # the compiler's fused ops
    "nerve.FusedConv", "nerve.FusedMatMul", "nerve.FusedElementwise", "nerve.Attention",
    "nerve.LayerNorm", "nerve.RMSNorm",
)  # fmt: skip
# int8: quantize/dequantize and the integer products (u8/s8 operands, int32 accumulation).
_INT8 = ("QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger")
_INT8_TYPES = frozenset({DType.FLOAT32, DType.UINT8, DType.INT8, DType.INT32})
_MOVEMENT = (
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Concat", "Split",
    "Slice", "Expand", "Gather",
)  # fmt: skip


def _attention_ok(node: Node, graph: Graph) -> str | None:
    # The native Attention kernel takes the scale as an attribute or a scalar input 4.
    if len(node.inputs) > 4 and node.inputs[4] and graph.types[node.inputs[4]].numel != 1:
        return "Attention with a non-scalar scale runs on host"
    return None


def _bf16_weights_ok(node: Node, graph: Graph) -> str | None:
    # bfloat16 only as a weight operand of a product the precision pass marked
    # operands="bfloat16" (the native engine's bf16 kernels read it packed).
    marked = node.attr(OPERANDS) == "bfloat16"
    for i, name in enumerate([*node.inputs, *node.outputs]):
        if not name or graph.types[name].dtype is not DType.BFLOAT16:
            continue
        if not (marked and i < 2 and name in graph.params):
            return f"{name!r} is bfloat16; the native engine reads bfloat16 only as bf16 weights"
    return None


def detect_features(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The ISA features in :data:`FEATURES` this machine has (empty off Linux/x86).

    >>> detect_features("flags : fpu avx2 avx512f amx_tile\\n")
    ('avx2', 'avx512f', 'amx_tile')
    """
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if platform.system() != "Linux" or not path.is_file():
            return ()
        try:
            cpuinfo = path.read_text(errors="replace")
        except OSError:
            return ()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
            break  # every core lists the same flags
    return tuple(f for f in FEATURES if f in flags)


def target(features: Iterable[str] | None = None) -> Target:
    """The cpu target for ``features`` (detected from this machine when None)."""
    feats = tuple(features) if features is not None else detect_features()
    ops: dict[str, OpRule] = {op: OpRule(dtypes=_F32) for op in _COMPUTE}
    ops["nerve.Attention"] = OpRule(dtypes=_F32, check=_attention_ok)
    ops.update({op: OpRule(dtypes=_ANY) for op in _MOVEMENT})
    ops.update({op: OpRule(dtypes=_INT8_TYPES) for op in _INT8})
    for op in ("nerve.FusedConv", "nerve.FusedMatMul"):  # bf16 weights of bf16 products
        ops[op] = OpRule(dtypes=_F32 | {DType.BFLOAT16}, check=_bf16_weights_ok)
    # bf16/int8 are listed even where the CPU lacks them: asking says which feature is missing.
    precisions = {
        "fp32": FP32,
        "bf16": replace(BF16, uses=tuple(f for f in BF16_FEATURES if f in feats)),
        "int8": replace(INT8, uses=tuple(f for f in INT8_FEATURES if f in feats)),
        "auto": auto_policy(feats),
    }
    return Target(
        name="cpu",
        engine="native",
        description="native engine: generated C, BLAS for fp32 GEMM, AMX tiles for bf16/int8",
        features=feats,
        mutable_weights=True,
        ops=ops,
        precisions=precisions,
        default_precision="fp32",
        layout=LayoutRules(activation="NCHW", conv_bias=True),
        limits=Limits(max_rank=8),
    )
