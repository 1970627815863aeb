"""ONNX frontend: ``load_onnx(model, shapes, constants) -> ir.Graph``.

>>> import numpy as np
>>> from onnx import helper, TensorProto
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
>>> graph = load_onnx(helper.make_model(g), shapes={"batch": 2})
>>> graph.inputs[0].shape
(2, 4)

``constants`` binds a graph input to a value at compile time: the input becomes a constant of
the graph (part of its structure), so shapes that depend on it become static. This is how a
model whose Reshape target shape, Slice bounds or Pad amounts arrive as graph inputs compiles:

>>> g = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
...      helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
>>> graph = load_onnx(helper.make_model(g), constants={"shape": np.array([3, 2])})
>>> graph.input_names, graph.types["y"].shape
(['x'], (3, 2))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from nerve.errors import (
    InputError,
    ModelFormatError,
    ShapeError,
    UnboundDimensionError,
    UnsupportedOperatorError,
)
from nerve.frontend.onnx.context import (
    CONSTANT_PARAM_MIN_ELEMENTS,
    ImportContext,
    schema_since_version,
    tensor_to_array,
)
from nerve.frontend.onnx.loader import ModelSource, default_opset, read_model
from nerve.frontend.onnx.registry import lookup, supported_ops
from nerve.ir import DType, Graph, TensorType, verify
from nerve.ir.dtypes import float32_to_bfloat16

# shapes={"input": (1, 3, 224, 224)} binds a whole input; shapes={"batch": 1} binds a symbol.
ShapeSpec = Mapping[str, Sequence[int] | int]
# constants={"shape": np.array([1, -1])} binds the graph input "shape" to that value.
ConstantSpec = Mapping[str, object]


def load_onnx(
    model: ModelSource,
    shapes: ShapeSpec | None = None,
    constants: ConstantSpec | None = None,
) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) as a static-shape IR graph.

    ``shapes`` binds input shapes or symbolic dimensions. ``constants`` binds whole inputs to
    values known at compile time (array-likes, converted to the input's element type; bfloat16
    inputs take uint16 bit patterns or float values): those inputs become constants of the graph
    and are no longer fed at run time.
    """
    proto = read_model(model)
    opset = default_opset(proto)
    _check_supported(proto.graph, proto)
    graph = Graph(proto.graph.name or "model")
    ctx = ImportContext(graph, opset)

    initializer_names = {t.name for t in proto.graph.initializer}
    bound = _constant_inputs(proto.graph, initializer_names, constants or {}, shapes or {})
    free_shapes = {k: v for k, v in (shapes or {}).items() if k not in bound}
    _bind_inputs(graph, proto.graph, initializer_names | set(bound), free_shapes)
    for name, (array, dtype) in bound.items():
        graph.add_constant(name, array, dtype)
    quantized = _quantized_weights(proto.graph)
    for tensor in proto.graph.initializer:
        array, dtype = tensor_to_array(tensor)
        if dtype.is_float or tensor.name in quantized:
            graph.add_param(tensor.name, array, dtype)
        else:
            graph.add_constant(tensor.name, array, dtype)
    if proto.graph.sparse_initializer:
        raise ModelFormatError("sparse initializers are not supported; densify them first")

    for node in proto.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            _import_constant(ctx, node)
            continue
        version = schema_since_version(node.op_type, node.domain, opset) or 0
        imp = lookup(node.op_type, node.domain, version)
        assert imp is not None  # _check_supported already refused the rest
        imp.fn(ctx, node)

    graph.set_outputs([o.name for o in proto.graph.output])
    _check_declared_outputs(graph, proto.graph)
    verify(graph)
    return graph


# (op type, input index) of the inputs that hold quantized weights in QDQ and QLinear models.
_QUANTIZED_WEIGHT_INPUTS = frozenset({
    ("DequantizeLinear", 0), ("QLinearConv", 3), ("QLinearMatMul", 3), ("ConvInteger", 1),
    ("MatMulInteger", 1),
})  # fmt: skip


def _quantized_weights(g: onnx.GraphProto) -> set[str]:
    """Integer initializers that are quantized weights: every use is a weight input above.

    Such initializers are Params (weights), not structural constants, so two quantized models
    that differ only in their weights share one compiled program. An initializer also used as
    structure (a shape, an axis) stays a constant.
    """
    uses: dict[str, set[bool]] = {}
    for node in g.node:
        for index, name in enumerate(node.input):
            if name and node.domain in ("", "ai.onnx"):
                uses.setdefault(name, set()).add((node.op_type, index) in _QUANTIZED_WEIGHT_INPUTS)
            elif name:
                uses.setdefault(name, set()).add(False)
    return {name for name, kinds in uses.items() if kinds == {True}}


def _check_supported(g: onnx.GraphProto, proto: onnx.ModelProto) -> None:
    """Refuse, before anything else happens, every op nerve cannot import — all of them at once."""
    opset = default_opset(proto)
    missing: dict[str, list[str]] = {}
    for i, node in enumerate(g.node):
        label = node.name or f"#{i}"
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            continue
        domain = "" if node.domain == "ai.onnx" else node.domain
        version = schema_since_version(node.op_type, domain, opset)
        if version is None or lookup(node.op_type, domain, version) is None:
            key = node.op_type if not domain else f"{domain}.{node.op_type}"
            missing.setdefault(key, []).append(label)
    if missing:
        raise UnsupportedOperatorError(
            missing,
            detail=(
                f"nerve imports {len(supported_ops())} ONNX op types (see docs/conformance.md); "
                "these are not among them"
            ),
        )


def _bind_inputs(
    graph: Graph, g: onnx.GraphProto, initializers: set[str], shapes: ShapeSpec
) -> None:
    input_names = [v.name for v in g.input if v.name not in initializers]
    symbols = {k: v for k, v in shapes.items() if k not in input_names}
    unknown = [k for k, v in symbols.items() if not isinstance(v, (int, np.integer))]
    if unknown:
        raise ShapeError(
            f"shapes names {unknown}, which are not inputs of the model (inputs: "
            f"{input_names}); give input shapes as tuples and symbols as integers"
        )
    unbound: list[tuple[str, int, str]] = []
    for vi in g.input:
        if vi.name in initializers:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ModelFormatError(f"input {vi.name!r} is not a tensor; nerve takes tensors only")
        dtype = DType.from_onnx(tt.elem_type)
        dims = list(tt.shape.dim) if tt.HasField("shape") else None
        given = shapes.get(vi.name)
        if given is not None:
            if isinstance(given, (int, np.integer)):
                raise ShapeError(f"shapes[{vi.name!r}] must be a tuple of dimensions")
            shape = tuple(int(d) for d in given)
            if dims is not None and len(dims) != len(shape):
                raise ShapeError(
                    f"input {vi.name!r} has rank {len(dims)} but shapes gives {shape}"
                )
            for axis, (d, s) in enumerate(zip(dims or [], shape)):
                if d.HasField("dim_value") and d.dim_value != s:
                    raise ShapeError(
                        f"input {vi.name!r} axis {axis} is fixed at {d.dim_value} in the model "
                        f"but shapes gives {s}"
                    )
            graph.add_input(vi.name, TensorType(dtype, shape))
            continue
        if dims is None:
            raise UnboundDimensionError([(vi.name, -1, "rank unknown")])
        resolved = []
        for axis, d in enumerate(dims):
            if d.HasField("dim_value"):
                resolved.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param in symbols:
                resolved.append(int(symbols[d.dim_param]))  # type: ignore[arg-type]
            else:
                unbound.append((vi.name, axis, d.dim_param or "?"))
                resolved.append(-1)
        if -1 not in resolved:
            graph.add_input(vi.name, TensorType(dtype, tuple(resolved)))
    if unbound:
        raise UnboundDimensionError(unbound)


def _constant_inputs(
    g: onnx.GraphProto, initializers: set[str], constants: ConstantSpec, shapes: ShapeSpec
) -> dict[str, tuple[np.ndarray, DType]]:
    """The inputs ``constants`` binds, each as (value, dtype), checked against its declaration."""
    declared = {vi.name: vi for vi in g.input if vi.name not in initializers}
    unknown = [k for k in constants if k not in declared]
    if unknown:
        raise InputError(
            f"constants names {unknown}, which are not inputs of the model (inputs: "
            f"{list(declared)})"
        )
    bound: dict[str, tuple[np.ndarray, DType]] = {}
    for name, value in constants.items():
        vi = declared[name]
        if not vi.type.HasField("tensor_type"):
            raise InputError(f"constants[{name!r}]: input {name!r} is not a tensor")
        tt = vi.type.tensor_type
        dtype = DType.from_onnx(tt.elem_type)
        array = _as_input_dtype(name, value, dtype)
        dims = list(tt.shape.dim) if tt.HasField("shape") else None
        if dims is not None and (
            len(dims) != array.ndim
            or any(d.HasField("dim_value") and d.dim_value != s for d, s in zip(dims, array.shape))
        ):
            declared_dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
            raise InputError(
                f"constants[{name!r}] has shape {array.shape}, but the model declares input "
                f"{name!r} with shape {declared_dims}"
            )
        given = shapes.get(name)
        if given is not None and (
            isinstance(given, (int, np.integer)) or tuple(int(d) for d in given) != array.shape
        ):
            raise InputError(
                f"shapes[{name!r}] is {given}, but constants[{name!r}] has shape {array.shape}"
            )
        bound[name] = (array, dtype)
    return bound


def _as_input_dtype(name: str, value: object, dtype: DType) -> np.ndarray:
    """``value`` as an array of ``dtype``; integer, bool and string values must convert exactly."""
    array = np.asarray(value)
    if dtype is DType.BFLOAT16:
        if array.dtype == np.uint16:
            return array  # already bit patterns, the form nerve stores bfloat16 in
        if array.dtype.name == "bfloat16":  # ml_dtypes.bfloat16
            return array.view(np.uint16)
        if array.dtype.kind in "fiub":
            return float32_to_bfloat16(array.astype(np.float32))
    elif array.dtype == dtype.numpy:
        return array
    elif dtype is DType.STRING:
        if array.dtype.kind in "OUS":
            return array.astype(object)
    elif array.dtype.kind in "fiub" and array.dtype.name != "bfloat16":
        converted = array.astype(dtype.numpy)
        if dtype.is_float or np.array_equal(converted, array):
            return converted
    raise InputError(
        f"constants[{name!r}]: a {array.dtype} value cannot be converted exactly to the "
        f"input's element type {dtype.value}"
    )


def _import_constant(ctx: ImportContext, node: onnx.NodeProto) -> None:
    attrs = ctx.attrs(node)
    values = [k for k in attrs if k.startswith("value") or k == "sparse_value"]
    if len(values) != 1:
        raise ModelFormatError(
            f"Constant node {node.name!r} must have exactly one value attribute, has {values}"
        )
    key = values[0]
    value = attrs[key]
    if key == "sparse_value":
        raise ModelFormatError(f"Constant node {node.name!r}: sparse values are not supported")
    dtype = None
    if key == "value_float" or key == "value_floats":
        array = np.asarray(value, dtype=np.float32)
    elif key == "value_int" or key == "value_ints":
        array = np.asarray(value, dtype=np.int64)
    elif key == "value_string" or key == "value_strings":
        array = np.asarray(value, dtype=object)
    else:
        tensor = next(a.t for a in node.attribute if a.name == "value")
        array, dtype = tensor_to_array(tensor)
    out = node.output[0]
    dt = dtype or DType.from_numpy(array.dtype)
    if dt.is_float and array.size >= CONSTANT_PARAM_MIN_ELEMENTS:
        ctx.graph.add_param(out, array, dt)
    else:
        ctx.graph.add_constant(out, array, dt)


def _check_declared_outputs(graph: Graph, g: onnx.GraphProto) -> None:
    for vi in g.output:
        if not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        got = graph.types[vi.name]
        if tt.elem_type and DType.from_onnx(tt.elem_type) != got.dtype:
            raise ShapeError(
                f"output {vi.name!r}: the model declares {DType.from_onnx(tt.elem_type).value} "
                f"but its producer computes {got.dtype.value}"
            )
        if tt.HasField("shape"):
            dims = list(tt.shape.dim)
            if len(dims) != got.rank or any(
                d.HasField("dim_value") and d.dim_value != s for d, s in zip(dims, got.shape)
            ):
                declared = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
                raise ShapeError(
                    f"output {vi.name!r}: the model declares shape {declared} but nerve infers "
                    f"{list(got.shape)}"
                )


__all__ = ["ConstantSpec", "ShapeSpec", "load_onnx", "read_model"]
