"""What the native engine runs: every op it claims, with the predicate that decides each node.

This is the one place that lists the native engine's ops. The planner (through the ``cpu``
target's op table) should send the engine only nodes for which :func:`claims` is true; the
engine itself runs any other node it is given through host kernels, so a mismatch costs speed,
never correctness.

>>> from nerve.ir import Graph, Node, TensorType, DType
>>> g = Graph()
>>> g.add_input("x", TensorType(DType.FLOAT32, (2, 3)))
>>> node = g.add_node(Node("Relu", ["x"], ["y"]), {"y": TensorType(DType.FLOAT32, (2, 3))})
>>> claims(node, g), why_not(Node("Relu", ["x"], ["z"]), g)
(True, 'output z has no type')
"""

from __future__ import annotations

from collections.abc import Callable

from nerve.ir import DType, Graph, Node
from nerve.ir.fused_ops import OPERANDS

Predicate = Callable[[Node, Graph], "str | None"]

F32 = DType.FLOAT32

# Map ops computed in float32, fused into one loop per chain (and into GEMM epilogues).
UNARY_OPS = frozenset(
    {
        "Abs", "Ceil", "Celu", "Cos", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid",
        "HardSwish", "LeakyRelu", "Log", "Mish", "Neg", "Reciprocal", "Relu", "Round", "Selu",
        "Shrink", "Sigmoid", "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Swish", "Tanh",
        "ThresholdedRelu",
    }
)  # fmt: skip
BINARY_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "PRelu"})
VARIADIC_OPS = frozenset({"Max", "Min", "Sum", "Mean"})
ELEMENTWISE_OPS = (
    UNARY_OPS
    | BINARY_OPS
    | VARIADIC_OPS
    | {
        "Clip",
        "Where",
        "BatchNormalization",
        "Cast",
    }
)

# Ops whose output aliases their input's memory (no code runs).
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
# Copies of any element type.
MOVEMENT_OPS = frozenset({"Transpose", "Concat", "Split", "Slice", "Expand", "Gather"})
GEMM_OPS = frozenset({"MatMul", "Gemm", "Conv"})
POOL_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})
NORM_OPS = frozenset({"Softmax", "LogSoftmax", "LayerNormalization", "RMSNormalization"})
REDUCE_OPS = frozenset(
    {
        "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare",
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    }
)  # fmt: skip

# Fixed-size element types the copy kernels move (bytes per element, any meaning).
_COPYABLE = frozenset(
    {
        DType.FLOAT32, DType.FLOAT64, DType.FLOAT16, DType.BFLOAT16, DType.INT8, DType.UINT8,
        DType.INT16, DType.UINT16, DType.INT32, DType.UINT32, DType.INT64, DType.UINT64,
        DType.BOOL,
    }
)  # fmt: skip


def _types_known(node: Node, graph: Graph) -> str | None:
    for name in (*node.inputs, *node.outputs):
        if name and name not in graph.types:
            kind = "output" if name in node.outputs else "input"
            return f"{kind} {name} has no type"
    return None


def _all_f32(node: Node, graph: Graph, names: list[str] | None = None) -> str | None:
    for name in names if names is not None else [*node.inputs, *node.outputs]:
        if name and graph.types[name].dtype is not F32:
            return f"{name} is {graph.types[name].dtype.value}; the native engine computes float32"
    return None


def _is_const(graph: Graph, name: str) -> bool:
    return not name or name in graph.constants


def step_result(op: str, attrs: dict[str, object], args: list[DType]) -> DType | str:
    """The dtype an elementwise step computes from ``args``, or why it cannot run natively.

    Every value inside a fused loop is a float32; bools enter only as Where conditions and
    other numbers only through a Cast to float32.
    """
    from nerve.engines.native.elementwise import CTYPES, EMITTERS

    if op not in EMITTERS:
        return f"the native engine has no elementwise {op}"
    if op == "Where":
        if args[0] is not DType.BOOL or any(a is not F32 for a in args[1:]):
            return "Where needs a bool condition and float32 branches"
        return F32
    if op == "Cast":
        if attrs.get("to") != DType.FLOAT32.onnx or args[0] not in CTYPES:
            return "only Casts to float32 of numeric tensors"
        return F32
    if op == "Gelu" and attrs.get("approximate", "none") not in ("none", "tanh"):
        return f"Gelu approximate={attrs.get('approximate')!r}"
    bad = [a for a in args if a is not F32]
    if bad:
        return f"{op} of {bad[0].value}; the native engine computes float32"
    return F32


def _run_program(program: tuple, regs: list[DType], what: str) -> str | None:
    for op, ins, attrs in program:
        if op == "BatchNormalization":
            return f"{what} holds BatchNormalization"
        result = step_result(op, dict(attrs), [regs[i] for i in ins])
        if isinstance(result, str):
            return f"{what}: {result}"
        regs.append(result)
    if regs[-1] is not F32:
        return f"{what} does not compute float32"
    return None


def _elementwise(node: Node, graph: Graph) -> str | None:
    if node.op_type == "BatchNormalization":
        if node.attr("training_mode", 0):
            return "BatchNormalization in training mode"
        if any(node.outputs[1:]):
            return "BatchNormalization running statistics outputs"
        if graph.types[node.inputs[0]].rank < 2:
            return "BatchNormalization input of rank < 2"
    args = [graph.types[n].dtype for n in node.inputs if n]
    result = step_result(node.op_type, node.attrs, args)
    if isinstance(result, str):
        return result
    out = node.outputs[0]
    return None if graph.types[out].dtype is F32 else f"{out} is not float32"


def _view(node: Node, graph: Graph) -> str | None:
    out = node.outputs[0]
    if graph.types[out].dtype not in _COPYABLE:
        return f"{out} has element type {graph.types[out].dtype.value}"
    return None


def _movement(node: Node, graph: Graph) -> str | None:
    for name in (*node.inputs[:1], *node.outputs):
        if name and graph.types[name].dtype not in _COPYABLE:
            return f"{name} has element type {graph.types[name].dtype.value}"
    if node.op_type == "Slice" and not all(_is_const(graph, n) for n in node.inputs[1:]):
        return "Slice starts/ends/axes/steps must be constants"
    if node.op_type == "Gather":
        idx = node.inputs[1]
        if graph.types[idx].dtype not in (DType.INT64, DType.INT32):
            return "Gather indices must be int32 or int64"
    if node.op_type == "Concat" and len({graph.types[n].dtype for n in node.inputs if n}) > 1:
        return "Concat inputs of different element types"
    return None


def _matmul(node: Node, graph: Graph) -> str | None:
    return _all_f32(node, graph)


def _conv(node: Node, graph: Graph) -> str | None:
    if graph.types[node.inputs[0]].rank not in (3, 4):
        return "only 1-D and 2-D convolutions"
    return _all_f32(node, graph)


def _pool(node: Node, graph: Graph) -> str | None:
    if node.op_type == "MaxPool" and len(node.outputs) > 1 and node.outputs[1]:
        return "MaxPool Indices output"
    rank = graph.types[node.inputs[0]].rank
    if node.op_type in ("MaxPool", "AveragePool") and rank not in (3, 4):
        return "only 1-D and 2-D pooling"
    if rank < 3:
        return "pooling input of rank < 3"
    return _all_f32(node, graph)


def _norm(node: Node, graph: Graph) -> str | None:
    if node.op_type in ("LayerNormalization", "RMSNormalization", "LayerNorm", "RMSNorm"):
        if node.attr("stash_type", 1) != 1:
            return "stash_type other than float32"
        x = graph.types[node.inputs[0]]
        axis = node.attr("axis", -1)
        axis = axis + x.rank if axis < 0 else axis
        normalized = 1
        for d in x.shape[axis:]:
            normalized *= d
        for name in node.inputs[1:3]:
            if name and graph.types[name].numel != normalized:
                return f"{name} must hold one value per normalized element"
    return _all_f32(node, graph, [n for n in (*node.inputs, *node.outputs) if n])


def _reduce(node: Node, graph: Graph) -> str | None:
    from nerve.engines.native.shapes import reduce_layout

    if len(node.inputs) > 1 and node.inputs[1] and node.inputs[1] not in graph.constants:
        return "reduction axes must be constants"
    if reduce_layout(node, graph) is None:
        return "reduced axes are not adjacent in memory, or unknown"
    return _all_f32(node, graph, [node.inputs[0], *node.outputs])


# ---- int8 (nk_int8.c; lowered by lower_int8.py) ---------------------------------------------

INT8_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger"})
_BYTES = frozenset({DType.UINT8, DType.INT8})


def _numel(graph: Graph, name: str) -> int:
    return graph.types[name].numel if name else 0


def _per_tensor(graph: Graph, name: str) -> bool:
    return not name or (graph.types[name].numel == 1 and graph.types[name].rank <= 1)


def _qdq_params(node: Node, graph: Graph) -> str | None:
    """Scale and zero point: float32 scale, per tensor or per axis (not blocked)."""
    x, scale = node.inputs[:2]
    zero = node.inputs[2] if len(node.inputs) > 2 else ""
    if graph.types[scale].dtype is not F32:
        return f"{node.op_type} with a {graph.types[scale].dtype.value} scale"
    if node.attr("block_size", 0):
        return f"blocked {node.op_type}"
    if zero and _numel(graph, zero) != _numel(graph, scale):
        return "zero point and scale of different sizes"
    if _per_tensor(graph, scale):
        return None
    shape = graph.types[x].shape
    axis = int(node.attr("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if graph.types[scale].rank != 1 or not 0 <= axis < len(shape) or (
        _numel(graph, scale) != shape[axis]
    ):
        return f"{node.op_type} scale neither per tensor nor per axis"
    return None


def _quantize(node: Node, graph: Graph) -> str | None:
    x, y = node.inputs[0], node.outputs[0]
    if graph.types[x].dtype is not F32:
        return f"QuantizeLinear of {graph.types[x].dtype.value}; the native engine quantizes float32"
    if graph.types[y].dtype not in _BYTES:
        return f"QuantizeLinear to {graph.types[y].dtype.value}; natively only uint8 and int8"
    if node.attr("precision", 0) not in (0, DType.FLOAT32.onnx):
        return "QuantizeLinear with a division precision other than float32"
    return _qdq_params(node, graph)


def _dequantize(node: Node, graph: Graph) -> str | None:
    x, y = node.inputs[0], node.outputs[0]
    zero = node.inputs[2] if len(node.inputs) > 2 else ""
    xt = graph.types[x].dtype
    if xt not in _BYTES | {DType.INT32}:
        return f"DequantizeLinear of {xt.value}; natively only uint8, int8 and int32"
    if zero and graph.types[zero].dtype is not xt:
        return "DequantizeLinear zero point of another type than its input"
    if graph.types[y].dtype is not F32:
        return f"DequantizeLinear to {graph.types[y].dtype.value}; natively only float32"
    return _qdq_params(node, graph)


def _integer_operands(node: Node, graph: Graph, out_channels: int) -> str | None:
    """u8/s8 operands, int32 result, zero points of the operands' types: A's per tensor (or,
    for MatMulInteger, per row), B's per tensor or per output channel/column."""
    a, b = node.inputs[:2]
    a_zero = node.inputs[2] if len(node.inputs) > 2 else ""
    b_zero = node.inputs[3] if len(node.inputs) > 3 else ""
    for name in (a, b):
        if graph.types[name].dtype not in _BYTES:
            return f"{name} is {graph.types[name].dtype.value}; natively only uint8 and int8"
    if graph.types[node.outputs[0]].dtype is not DType.INT32:
        return f"{node.outputs[0]} is not int32"
    for zero, operand in ((a_zero, a), (b_zero, b)):
        if zero and graph.types[zero].dtype is not graph.types[operand].dtype:
            return f"zero point {zero} of another type than {operand}"
    if b_zero and not _per_tensor(graph, b_zero) and (
        graph.types[b_zero].rank != 1 or _numel(graph, b_zero) != out_channels
    ):
        return f"{node.op_type} B zero point neither per tensor nor per column"
    return None


def _matmul_integer(node: Node, graph: Graph) -> str | None:
    a, b = node.inputs[:2]
    a_zero = node.inputs[2] if len(node.inputs) > 2 else ""
    if graph.types[b].rank != 2:
        return "MatMulInteger with a B of rank other than 2"
    a_shape = graph.types[a].shape
    rows = a_shape[-2] if len(a_shape) > 1 else 1
    if a_zero and not _per_tensor(graph, a_zero) and (
        graph.types[a_zero].rank != 1 or _numel(graph, a_zero) != rows
    ):
        return "MatMulInteger A zero point neither per tensor nor per row"
    return _integer_operands(node, graph, graph.types[b].shape[1])


def _conv_integer(node: Node, graph: Graph) -> str | None:
    x = node.inputs[0]
    x_zero = node.inputs[2] if len(node.inputs) > 2 else ""
    if graph.types[x].rank not in (3, 4):
        return "only 1-D and 2-D convolutions"
    if not _per_tensor(graph, x_zero):
        return "ConvInteger x zero point must be a scalar"
    return _integer_operands(node, graph, graph.types[node.inputs[1]].shape[0])


NATIVE_OPS: dict[str, Predicate] = {
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
    "MatMulInteger": _matmul_integer,
    "ConvInteger": _conv_integer,
    **{op: _elementwise for op in ELEMENTWISE_OPS},
    **{op: _view for op in VIEW_OPS},
    **{op: _movement for op in MOVEMENT_OPS},
    "MatMul": _matmul,
    "Gemm": _matmul,
    "Conv": _conv,
    **{op: _pool for op in POOL_OPS},
    **{op: _norm for op in NORM_OPS},
    **{op: _reduce for op in REDUCE_OPS},
}


def _bf16_operands(node: Node, graph: Graph) -> str | None:
    if node.attr(OPERANDS) != "bfloat16":
        return f"operands={node.attr(OPERANDS)!r}"
    for name in node.inputs[:2]:
        dtype = graph.types[name].dtype
        if dtype is not F32 and not (dtype is DType.BFLOAT16 and name in graph.params):
            return f"{name} is {dtype.value}; bf16 operands are float32 or bfloat16 weights"
    return None


def _fused_gemm(node: Node, graph: Graph) -> str | None:
    if node.op_type == "FusedConv" and graph.types[node.inputs[0]].rank not in (3, 4):
        return "only 1-D and 2-D convolutions"
    names = [n for n in (*node.inputs[:3], *node.outputs) if n]
    if node.attr(OPERANDS) is not None:  # bf16 operands (lower_bf16): weights may be bf16
        bad = _bf16_operands(node, graph)
        names = [n for n in names if n not in node.inputs[:2]]
    else:
        bad = None
    bad = bad or _all_f32(node, graph, names)
    if bad:
        return bad
    extra = [graph.types[n].dtype for n in node.inputs[3:] if n]
    return _run_program(node.attr("epilogue", ()), [F32, *extra], "the epilogue")


def _fused_elementwise(node: Node, graph: Graph) -> str | None:
    regs = [graph.types[n].dtype for n in node.inputs if n]
    bad = _run_program(node.attr("program", ()), regs, "the program")
    if bad:
        return bad
    return _all_f32(node, graph, list(node.outputs))


def _attention(node: Node, graph: Graph) -> str | None:
    scale = node.inputs[4] if len(node.inputs) > 4 else ""
    if scale and graph.types[scale].numel != 1:
        return "Attention scale input must be a scalar"
    return _all_f32(node, graph, [n for n in (*node.inputs, *node.outputs) if n])


NERVE_DOMAIN_OPS: dict[str, Predicate] = {
    "FusedConv": _fused_gemm,
    "FusedMatMul": _fused_gemm,
    "FusedElementwise": _fused_elementwise,
    "Attention": _attention,
    "LayerNorm": _norm,
    "RMSNorm": _norm,
}


def why_not(node: Node, graph: Graph) -> str | None:
    """Why the native engine does not run ``node`` (None when it does)."""
    if node.domain == "nerve":
        predicate = NERVE_DOMAIN_OPS.get(node.op_type)
    elif node.domain == "":
        predicate = NATIVE_OPS.get(node.op_type)
    else:
        predicate = None
    if predicate is None:
        return f"the native engine has no {node.qualified_op} kernel"
    return _types_known(node, graph) or predicate(node, graph)


def claims(node: Node, graph: Graph) -> bool:
    """True when the native engine compiles ``node`` into its C code."""
    return why_not(node, graph) is None
