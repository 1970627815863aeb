"""The state an importer works with while one ONNX graph becomes an IR graph."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from nerve.errors import ModelFormatError, NerveError, ShapeError, UnsupportedAttributeError
from nerve.ir import DType, Graph, Node, TensorType, fold_shape_op, infer_node
from nerve.ir.opset import onnx_schema

# Float Constant nodes at least this large are weights an exporter inlined: they become Params
# so they stay out of the structural key and can be updated. Smaller ones (scales, epsilons)
# are structure.
CONSTANT_PARAM_MIN_ELEMENTS = 64


def tensor_to_array(tensor: onnx.TensorProto) -> tuple[np.ndarray, DType]:
    """A TensorProto's values as numpy, with its nerve dtype (bfloat16 kept as uint16 bits).

    float8, float4, 4-bit and 2-bit tensors come back as ml_dtypes arrays, one element per byte
    (packed 4-bit and 2-bit data unpacked, by onnx's numpy_helper). Data that does not fit the
    tensor's dims (a corrupt or truncated file) is a ModelFormatError naming the tensor.
    """
    dims = tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelFormatError(f"tensor {tensor.name!r} has negative dims {list(dims)}")
    try:
        array, dtype = _decode_tensor(tensor)
    except NerveError:
        raise
    except Exception as exc:  # numpy/onnx decoding errors of corrupt data
        raise ModelFormatError(f"tensor {tensor.name!r} cannot be decoded: {exc}") from None
    if array.shape != dims:
        raise ModelFormatError(
            f"tensor {tensor.name!r}: its data holds {array.size} values, but its dims "
            f"{list(dims)} need {math.prod(dims)} (is the file corrupt or truncated?)"
        )
    return array, dtype


def _decode_tensor(tensor: onnx.TensorProto) -> tuple[np.ndarray, DType]:
    dtype = DType.from_onnx(tensor.data_type)
    if dtype is DType.BFLOAT16:
        if tensor.raw_data:
            bits = np.frombuffer(tensor.raw_data, dtype=np.uint16)
        else:
            bits = np.asarray(tensor.int32_data, dtype=np.uint16)
        return bits.reshape(tuple(tensor.dims)).copy(), dtype
    array = numpy_helper.to_array(tensor)
    if dtype is DType.STRING:
        array = np.vectorize(lambda s: s.decode() if isinstance(s, bytes) else s, otypes=[object])(
            array
        ) if array.size else array.astype(object)
    if dtype.is_low_precision and array.dtype != dtype.numpy:
        # onnx unpacks 4-bit and 2-bit data and returns ml_dtypes arrays; onnx releases before
        # 1.18 returned the same one-byte-per-element codes as (u)int8 or as their own uint8-based
        # types. Either way the bytes are the element codes: reinterpret them, never convert.
        if array.dtype.itemsize != 1:
            raise ModelFormatError(
                f"tensor {tensor.name!r}: onnx decoded its {dtype.value} data as {array.dtype}; "
                "upgrade the onnx package (nerve needs onnx>=1.18 for this element type)"
            )
        array = np.ascontiguousarray(array).view(dtype.numpy)
    return np.asarray(array, dtype=dtype.numpy), dtype


def attribute_value(attr: onnx.AttributeProto) -> Any:
    """An attribute as a plain Python/numpy value: tuples for lists, arrays for tensors."""
    value = helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return tensor_to_array(value)[0]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        if value and isinstance(value[0], bytes):
            return tuple(v.decode() for v in value)
        if value and isinstance(value[0], onnx.TensorProto):
            return tuple(tensor_to_array(v)[0] for v in value)
        return tuple(value)
    return value


class ImportContext:
    """What importers use: attributes with defaults, constants, and ``emit`` for new IR nodes."""

    def __init__(self, graph: Graph, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self._reserved: set[str] = set()

    # ---- reading the ONNX node -------------------------------------------------------------
    def attrs(self, node: onnx.NodeProto) -> dict[str, Any]:
        """The node's attributes, with every default of the op's schema filled in."""
        values: dict[str, Any] = {}
        schema = self.schema(node)
        if schema is not None:
            for name, spec in schema.attributes.items():
                if spec.default_value.type != onnx.AttributeProto.UNDEFINED:
                    values[name] = attribute_value(spec.default_value)
        for attr in node.attribute:
            if attr.ref_attr_name:
                raise ModelFormatError(
                    f"node {node.name!r}: attribute references are only valid inside functions"
                )
            values[attr.name] = attribute_value(attr)
        return values

    def schema(self, node: onnx.NodeProto) -> onnx.defs.OpSchema | None:
        try:
            return onnx.defs.get_schema(node.op_type, self.opset, node.domain)
        except onnx.defs.SchemaError:
            return None

    def constant_value(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is known at import time (a constant), else None."""
        if not name:
            return None
        return self.graph.constants.get(name)

    def require_constant(self, node: onnx.NodeProto, name: str, what: str) -> np.ndarray:
        value = self.constant_value(name)
        if value is None:
            where = (
                f"it is a graph input: bind it with nerve.compile(..., constants={{{name!r}: "
                "value})"
                if name in self.graph.input_names
                else "it is computed at run time in this model"
            )
            raise UnsupportedAttributeError(
                node.op_type, node.name, what,
                f"input {name!r} must be a constant (nerve compiles static shapes); {where}",
            )
        return value

    def type_of(self, name: str) -> TensorType:
        return self.graph.types[name]

    def fresh(self, base: str) -> str:
        """A tensor name not used yet (reserved, so two calls before emit() never collide)."""
        name, i = base, 0
        while name in self.graph.types or name in self._reserved:
            i += 1
            name = f"{base}_{i}"
        self._reserved.add(name)
        return name

    def add_constant(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.graph.add_constant(name, np.asarray(value))
        return name

    # ---- writing IR ------------------------------------------------------------------------
    def emit(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        attrs: dict[str, Any] | None = None,
        name: str = "",
        domain: str = "",
    ) -> Node:
        """Append an IR node, infer its output types, and fold it if it is static shape math."""
        node = Node(op_type, list(inputs), list(outputs), dict(attrs or {}), name, domain)
        node.name = self.graph.unique_node_name(name or op_type)
        for inp in node.inputs:
            if inp and inp not in self.graph.types:
                raise ModelFormatError(
                    f"node {node.name!r} ({op_type}) reads {inp!r}, which no earlier node, "
                    "input or initializer defines (is the graph topologically sorted?)"
                )
        out_types = infer_node(node, self.graph.types, self.graph.constants)
        folded = fold_shape_op(node, self.graph.types, self.graph.constants)
        if folded is not None:
            fitted = _fit_folded(folded, out_types)
            if fitted is not None:
                for out, value, t in zip(node.outputs, fitted, out_types):
                    self.graph.add_constant(out, value, t.dtype if t is not None else None)
                return node
        for out, t in zip(node.outputs, out_types):
            if out and t is None:
                raise ShapeError(
                    f"node {node.name!r} ({op_type}): the shape of output {out!r} depends on "
                    "values known only at run time; nerve compiles static shapes. Make the "
                    "shape-determining inputs constants (e.g. export with fixed shapes, or "
                    "bind graph inputs with nerve.compile(..., constants={...}))."
                )
        self.graph.add_node(
            node, {o: t for o, t in zip(node.outputs, out_types) if o and t is not None}
        )
        return node

    def passthrough(self, node: onnx.NodeProto, **overrides: Any) -> Node:
        """Emit the ONNX node unchanged (attributes with defaults filled)."""
        attrs = self.attrs(node)
        attrs.update(overrides)
        return self.emit(node.op_type, list(node.input), list(node.output), attrs, node.name)

    def refuse(self, node: onnx.NodeProto, attribute: str, why: str) -> None:
        raise UnsupportedAttributeError(node.op_type, node.name, attribute, why)


def _fit_folded(
    folded: list[np.ndarray], out_types: list[TensorType | None]
) -> list[np.ndarray] | None:
    """Folded values in the inferred output types; None if a shape disagrees (don't fold)."""
    fitted = []
    for value, t in zip(folded, out_types):
        if t is None:
            fitted.append(value)
        elif t.shape != value.shape:
            return None
        else:
            fitted.append(value if value.dtype == t.dtype.numpy else value.astype(t.dtype.numpy))
    return fitted


def schema_since_version(op_type: str, domain: str, opset: int) -> int | None:
    try:
        return int(onnx.defs.get_schema(op_type, opset, domain).since_version)
    except onnx.defs.SchemaError:
        return None


__all__ = ["ImportContext", "attribute_value", "onnx_schema", "tensor_to_array"]
