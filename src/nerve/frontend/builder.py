"""A small Python DSL that writes ONNX models: inputs, weights, ops, outputs.

The builder records ONNX nodes with ``onnx.helper`` and produces a checked ``onnx.ModelProto``
(output types come from ONNX's own shape inference), or an IR graph through nerve's ONNX
frontend. It is what ``nerve.models`` and the tests use to write networks in code.

>>> import numpy as np
>>> b = Builder("tiny")
>>> x = b.input("x", "float32", (1, 3, 8, 8))
>>> w = b.param("w", np.ones((4, 3, 3, 3), np.float32))
>>> y = b.op("Relu", b.op("Conv", x, w, pads=[1, 1, 1, 1]))
>>> b.output(y, name="y")
>>> model = b.to_onnx()
>>> [n.op_type for n in model.graph.node], model.graph.output[0].name
(['Conv', 'Relu'], 'y')

Inputs of :meth:`Builder.op` may be tensors, ``None`` (an omitted optional input), numpy
arrays, or Python numbers; arrays and numbers become constants (Python floats as float32,
Python ints as int64).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from nerve.errors import ModelFormatError
from nerve.frontend.onnx import ShapeSpec, load_onnx
from nerve.ir import DType, Graph

# Newest opset of the range nerve's issue targets (13-21); has Gelu (20) and LayerNorm (17).
DEFAULT_OPSET = 21

DTypeLike = str | DType | np.dtype | type


@dataclass(frozen=True)
class Tensor:
    """A named value of the model being built (an input, a weight, a constant, an op result)."""

    name: str

    def __str__(self) -> str:
        return self.name


TensorLike = Tensor | np.ndarray | float | int | None


def as_dtype(dtype: DTypeLike) -> DType:
    """``"float32"``, ``np.float32``, ``np.dtype("int64")`` or a DType, as a DType."""
    if isinstance(dtype, DType):
        return dtype
    if isinstance(dtype, str):
        try:
            return DType(dtype)
        except ValueError:
            known = ", ".join(d.value for d in DType)
            raise ModelFormatError(f"unknown dtype {dtype!r}; use one of {known}") from None
    return DType.from_numpy(dtype)


class Builder:
    """Builds one ONNX model: see the module docstring for an example."""

    def __init__(self, name: str = "model", *, opset: int = DEFAULT_OPSET) -> None:
        self.name = name
        self.opset = opset
        self._inputs: list[onnx.ValueInfoProto] = []
        self._initializers: list[onnx.TensorProto] = []
        self._nodes: list[onnx.NodeProto] = []
        self._outputs: list[str] = []
        self._domains: dict[str, int] = {}
        self._taken: set[str] = set()
        self._node_names: set[str] = set()
        self._produced: set[str] = set()  # names written by a node (renamable)
        self._scope: list[str] = []
        self._declared: dict[str, onnx.ValueInfoProto] = {}  # output types given explicitly
        self._aliases: dict[str, str] = {}  # renamed value -> its new name

    # ---- naming ----------------------------------------------------------------------------
    @contextmanager
    def scope(self, prefix: str) -> Iterator[None]:
        """Prefix the names created inside the ``with`` block with ``prefix/``."""
        self._scope.append(prefix)
        try:
            yield
        finally:
            self._scope.pop()

    def _scoped(self, base: str) -> str:
        return "/".join([*self._scope, base])

    def _claim(self, name: str) -> str:
        if name in self._taken:
            raise ModelFormatError(f"builder {self.name!r}: the name {name!r} is already used")
        self._taken.add(name)
        return name

    def _fresh(self, base: str, taken: set[str]) -> str:
        base = self._scoped(base)
        candidate, i = base, 0
        while candidate in taken:
            i += 1
            candidate = f"{base}_{i}"
        return candidate

    # ---- sources ---------------------------------------------------------------------------
    def input(self, name: str, dtype: DTypeLike, shape: Sequence[int | str | None]) -> Tensor:
        """A graph input; string dimensions are symbolic (bound at compile time)."""
        dt = as_dtype(dtype)
        self._claim(name)
        self._inputs.append(helper.make_tensor_value_info(name, dt.onnx, list(shape)))
        return Tensor(name)

    def param(self, name: str, data: np.ndarray) -> Tensor:
        """A weight (an initializer), named ``name`` inside the current scope."""
        return self._initializer(self._claim(self._scoped(name)), np.asarray(data))

    def const(
        self,
        value: np.ndarray | float | int | Sequence[Any],
        *,
        dtype: DTypeLike | None = None,
        name: str | None = None,
    ) -> Tensor:
        """A constant (shapes, axes, scalars). Python floats become float32, ints int64."""
        array = _as_array(value, dtype)
        full = (
            self._claim(self._scoped(name))
            if name
            else self._claim(self._fresh("const", self._taken))
        )
        return self._initializer(full, array)

    def _initializer(self, name: str, array: np.ndarray) -> Tensor:
        as_dtype(array.dtype)  # refuse dtypes nerve cannot hold, with a clear message
        self._initializers.append(numpy_helper.from_array(array, name))
        return Tensor(name)

    # ---- ops -------------------------------------------------------------------------------
    def op(
        self,
        op_type: str,
        *inputs: TensorLike,
        name: str | None = None,
        domain: str = "",
        **attrs: Any,
    ) -> Tensor:
        """Add a one-output node and return its output. Attributes are keyword arguments."""
        return self.op_outputs(op_type, *inputs, count=1, name=name, domain=domain, **attrs)[0]

    def op_outputs(
        self,
        op_type: str,
        *inputs: TensorLike,
        count: int,
        name: str | None = None,
        domain: str = "",
        **attrs: Any,
    ) -> tuple[Tensor, ...]:
        """Add a node with ``count`` outputs (Split, TopK, ...) and return them in order."""
        names = [self._input_name(i) for i in inputs]
        node_name = self._fresh(name or op_type, self._node_names)
        self._node_names.add(node_name)
        # Values are named after their node: "block/conv1.out", "TopK.out0", "TopK.out1".
        base = node_name.rsplit("/", 1)[-1]
        outs = [
            self._claim(self._fresh(f"{base}.out{k}" if count > 1 else f"{base}.out", self._taken))
            for k in range(count)
        ]
        self._produced.update(outs)
        clean = {k: _attr_value(v) for k, v in attrs.items() if v is not None}
        self._nodes.append(
            helper.make_node(op_type, names, outs, name=node_name, domain=domain, **clean)
        )
        if domain and domain != "ai.onnx":
            self._domains.setdefault(domain, 1)
        return tuple(Tensor(o) for o in outs)

    def _input_name(self, value: TensorLike) -> str:
        if value is None:
            return ""
        if isinstance(value, Tensor):
            if value.name not in self._taken:
                raise ModelFormatError(
                    f"builder {self.name!r}: tensor {value.name!r} belongs to another builder"
                )
            return self._aliases.get(value.name, value.name)
        return self.const(value).name

    # ---- outputs and results ---------------------------------------------------------------
    def output(
        self,
        tensor: Tensor,
        name: str | None = None,
        *,
        dtype: DTypeLike | None = None,
        shape: Sequence[int | str | None] | None = None,
    ) -> None:
        """Mark ``tensor`` as a model output, optionally under another ``name``.

        ONNX shape inference types the outputs; give ``dtype`` and ``shape`` for outputs of
        ops it does not know (custom domains).
        """
        source = self._input_name(tensor)
        if name and name != source:
            if source in self._produced and source not in self._outputs:
                self._rename(source, self._claim(name))
            else:  # an input, weight or existing output cannot be renamed: copy it
                copied = self.op("Identity", tensor)
                self._rename(copied.name, self._claim(name))
            source = name
        if source in self._outputs:
            raise ModelFormatError(f"builder {self.name!r}: {source!r} is already an output")
        if (dtype is None) != (shape is None):
            raise ModelFormatError(
                f"builder {self.name!r}: output {source!r} needs both dtype and shape, or neither"
            )
        if dtype is not None and shape is not None:
            self._declared[source] = helper.make_tensor_value_info(
                source, as_dtype(dtype).onnx, list(shape)
            )
        self._outputs.append(source)

    def _rename(self, old: str, new: str) -> None:
        for node in self._nodes:
            node.input[:] = [new if n == old else n for n in node.input]
            node.output[:] = [new if n == old else n for n in node.output]
        self._produced.discard(old)
        self._produced.add(new)
        # Handles the caller still holds under the old name keep working.
        self._aliases[old] = new

    def to_onnx(self, *, check: bool = True) -> onnx.ModelProto:
        """The model as a checked ``onnx.ModelProto``; output types come from ONNX inference."""
        if not self._outputs:
            raise ModelFormatError(f"builder {self.name!r} has no outputs; call output() first")
        graph = helper.make_graph(
            [_copy(n) for n in self._nodes],
            self.name,
            [_copy(v) for v in self._inputs],
            [onnx.ValueInfoProto(name=o) for o in self._outputs],
            initializer=[_copy(t) for t in self._initializers],
        )
        opsets = [helper.make_opsetid("", self.opset)]
        opsets += [helper.make_opsetid(d, v) for d, v in sorted(self._domains.items())]
        # The oldest IR version that carries these opsets, so other runtimes can load it too.
        model = helper.make_model(
            graph,
            opset_imports=opsets,
            producer_name="nerve.builder",
            ir_version=helper.find_min_ir_version_for(opsets, ignore_unknown=True),
        )
        self._type_outputs(model)
        if check:
            try:
                onnx.checker.check_model(model)
            except onnx.checker.ValidationError as exc:
                first = str(exc).strip().splitlines()[0]
                raise ModelFormatError(f"builder {self.name!r}: invalid model: {first}") from None
        return model

    def _type_outputs(self, model: onnx.ModelProto) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        except onnx.shape_inference.InferenceError as exc:
            raise ModelFormatError(f"builder {self.name!r}: {exc}") from None
        known = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}
        known.update({v.name: v for v in inferred.graph.input})
        for t in model.graph.initializer:
            known.setdefault(t.name, helper.make_tensor_value_info(t.name, t.data_type, t.dims))
        known.update(self._declared)
        for out in model.graph.output:
            vi = known.get(out.name)
            if vi is None or not vi.type.tensor_type.elem_type:
                raise ModelFormatError(
                    f"builder {self.name!r}: ONNX shape inference gives no type for output "
                    f"{out.name!r}; check the ops that produce it, or declare its dtype and shape "
                    "in output()"
                )
            out.type.CopyFrom(vi.type)

    def to_graph(self, shapes: ShapeSpec | None = None) -> Graph:
        """The model as a nerve IR graph (through the ONNX frontend)."""
        return load_onnx(self.to_onnx(), shapes)


def _copy(message: Any) -> Any:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


def _as_array(value: Any, dtype: DTypeLike | None) -> np.ndarray:
    if dtype is not None:
        return np.asarray(value, dtype=as_dtype(dtype).numpy)
    if isinstance(value, np.ndarray | np.generic):
        return np.asarray(value)
    array = np.asarray(value)
    # Python numbers default to the ONNX-typical widths, not numpy's float64.
    if array.dtype == np.float64:
        return array.astype(np.float32)
    if array.dtype.kind == "i":
        return array.astype(np.int64)
    return array


def _attr_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        raise ModelFormatError("attribute values cannot be mappings")
    return value


__all__ = ["DEFAULT_OPSET", "Builder", "Tensor", "TensorLike", "as_dtype"]
