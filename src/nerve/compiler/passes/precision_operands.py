"""Operand precision for the precision pass: bf16 or int8 operands, wide accumulation.

AMX, AVX512-BF16 and VNNI multiply narrow operands and accumulate wide. The pass writes that
into the graph with ops the host engine runs, so it computes exactly what the hardware
computes (the oracle), and a native engine can recognise the form and run it on its kernels:

bfloat16 — a MatMul/Gemm/Conv (fused or not) becomes a FusedMatMul/FusedConv marked
``operands="bfloat16"``: it reads inputs 0 and 1 rounded to bfloat16 (round to nearest even)
and multiplies and accumulates in float32, bias and epilogue following in float32. A weight
operand becomes a bfloat16 slot (a bake recipe ``cast``; the native engine packs it into its
kernels' pair layout), an activation is rounded by the kernel that reads it:

    FusedMatMul[operands=bfloat16](x, W@cast (bf16 slot), bias; epilogue)

A Gemm with transA (which FusedMatMul cannot express) keeps the explicit form, a float32 GEMM
over operands rounded by Casts (counted as ``bf16_cast_form``):

    x ─Cast(bf16)─Cast(f32)─┐
    W@cast (bf16 slot) ─Cast(f32)─ Gemm (float32 accumulation, float32 out)

int8 — the weight is quantized per output channel, symmetric (a bake recipe: int8 values and
the float32 scales), the activation per tensor to uint8 with a zero point from the calibrated
range (u8 x s8, as ``vpdpbusd`` and AMX ``tdpbusd`` take them); the product accumulates in
int32 and is scaled back in float32; bias and epilogue follow in float32:

    x ─QuantizeLinear(s_x, zp)─ MatMulInteger / ConvInteger (W@quantize_symmetric, zp)
      ─DequantizeLinear(s_x * s_w per channel)─ [Add bias] ─ [FusedElementwise epilogue]

Nodes the int8 form cannot express (a weight that is an activation, transA, Gemm's beta != 1,
batched weights) keep float32; the pass counts them as ``int8_skipped``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from nerve.compiler.bake import step
from nerve.compiler.context import PassContext
from nerve.compiler.passes.fuse import _as_fused as as_fused
from nerve.errors import CompileError
from nerve.ir import DType, Graph, Node, TensorType
from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16
from nerve.ir.fused_ops import CONV_ATTRS, OPERANDS


def activation_quantization(low: float, high: float) -> tuple[np.float32, np.uint8]:
    """(scale, zero point) of asymmetric uint8 quantization of the range [low, high].

    The range is widened to include 0 (so 0 is exact, as padding and ReLU need); an empty
    range gets scale 1.

    >>> activation_quantization(-1.0, 3.0)
    (np.float32(0.015686275), np.uint8(64))
    """
    lo, hi = np.float32(min(float(low), 0.0)), np.float32(max(float(high), 0.0))
    scale = np.float32((hi - lo) / np.float32(255)) if hi > lo else np.float32(1)
    zero = np.uint8(np.clip(np.rint(-lo / scale), 0, 255))
    return scale, zero


class OperandNarrower:
    """Rewrites GEMM-class nodes to read bf16 or int8 operands (see the module docstring)."""

    def __init__(self, graph: Graph, ctx: PassContext) -> None:
        self.graph, self.ctx = graph, ctx
        self.rounded: dict[str, str] = {}  # value -> its bf16-rounded float32 copy
        self.slots: dict[str, str] = {}  # weight -> its bfloat16 slot
        self.quantized: dict[str, tuple[str, str, np.float32]] = {}  # value -> (q, zp, scale)
        calibration = ctx.option("calibration")
        self.ranges: Mapping[str, Any] = calibration or {}

    def narrow(self, node: Node, operands: DType) -> list[Node]:
        if any(self.graph.types[i].dtype is not DType.FLOAT32 for i in node.inputs[:2] if i):
            return [node]  # only float32 models have an exact narrowed form here
        if operands is DType.BFLOAT16:
            return self._bf16(node)
        if operands is DType.INT8:
            return self._int8(node)
        raise CompileError(f"operand precision {operands.value} is not supported")

    # ---- helpers ----------------------------------------------------------------------------
    def _value(self, base: str, type_: TensorType) -> str:
        name = self.graph.unique_value_name(base)
        self.graph.types[name] = type_
        return name

    def _node(self, op: str, inputs: list[str], outputs: list[str], attrs: dict[str, Any],
              name: str, domain: str = "") -> Node:
        node = Node(op, inputs, outputs, attrs, self.graph.unique_node_name(name), domain)
        self.graph._node_names.add(node.name)
        return node

    def _constant(self, base: str, value: np.ndarray, dtype: DType | None = None) -> str:
        name = self.graph.unique_value_name(base)
        self.graph.add_constant(name, value, dtype)
        return name

    # ---- bfloat16 ---------------------------------------------------------------------------
    def _bf16(self, node: Node) -> list[Node]:
        if node.op_type == "Gemm" and not node.domain and node.attr("transA", 0):
            # FusedMatMul has no transA: round the operands with Casts, multiply in float32.
            self.ctx.count("bf16_cast_form")
            return self._bf16_casts(node)
        fused = as_fused(node)
        inputs = list(fused.inputs)
        for i in (0, 1):
            inputs[i] = self._bf16_operand(inputs[i])
        self.ctx.count("bf16_operands")
        attrs = {**fused.attrs, OPERANDS: "bfloat16"}
        return [Node(fused.op_type, inputs, list(fused.outputs), attrs, fused.name, fused.domain)]

    def _bf16_operand(self, name: str) -> str:
        """A weight becomes a bfloat16 slot; a constant its rounded float32 copy; an activation
        stays as it is (the kernel rounds it)."""
        if name in self.graph.params:
            return self._bf16_slot(name)
        if name in self.graph.constants:
            return self._round(name, [])
        return name

    def _bf16_slot(self, name: str) -> str:
        if name not in self.slots:
            # The weight slot holds bfloat16 (what the tiles read); the host widens it.
            low_type = TensorType(DType.BFLOAT16, self.graph.types[name].shape)
            self.slots[name] = self.ctx.book.derive([name], step("cast", to="bfloat16"), low_type)
            self.ctx.count("weight_cast")
        return self.slots[name]

    def _bf16_casts(self, node: Node) -> list[Node]:
        pre: list[Node] = []
        inputs = list(node.inputs)
        for i in (0, 1):
            inputs[i] = self._round(inputs[i], pre)
        narrowed = Node(node.op_type, inputs, list(node.outputs), dict(node.attrs), node.name,
                        node.domain)
        return [*pre, narrowed]

    def _round(self, name: str, pre: list[Node]) -> str:
        if name in self.rounded:
            return self.rounded[name]
        t = self.graph.types[name]
        low_type = TensorType(DType.BFLOAT16, t.shape)
        if name in self.graph.constants:
            value = bfloat16_to_float32(float32_to_bfloat16(self.graph.constants[name]))
            rounded = self._constant(f"{name}@bf16", value, DType.FLOAT32)
        else:
            if name in self.graph.params:
                low = self._bf16_slot(name)
            else:
                low = self._value(f"{name}@bfloat16", low_type)
                pre.append(self._node("Cast", [name], [low], {"to": DType.BFLOAT16.onnx},
                                      f"{name}_to_bf16"))
            rounded = self._value(f"{name}@bf16", t)
            pre.append(self._node("Cast", [low], [rounded], {"to": DType.FLOAT32.onnx},
                                  f"{name}_from_bf16"))
        self.rounded[name] = rounded
        return rounded

    # ---- int8 -------------------------------------------------------------------------------
    def _int8(self, node: Node) -> list[Node]:
        plan = self._int8_plan(node)
        if plan is None:
            self.ctx.count("int8_skipped")
            return [node]
        weight_axis, out_axis, factor, bias = plan
        x, w = node.inputs[0], node.inputs[1]
        pre: list[Node] = []
        xq, zero, x_scale = self._quantize_activation(node, x, pre)
        w_type = self.graph.types[w]
        if weight_axis == 0 and node.qualified_op != "nerve.FusedConv" and node.op_type != "Conv":
            # Gemm with transB: W is (N, K); the integer matmul wants (K, N).
            w = self.ctx.book.derive([w], step("transpose", perm=(1, 0)),
                                     TensorType(DType.FLOAT32, w_type.shape[::-1]))
            w_type, weight_axis = self.graph.types[w], 1
        wq = self.ctx.book.derive([w], step("quantize_symmetric", axis=weight_axis),
                                  TensorType(DType.INT8, w_type.shape))
        channels = w_type.shape[weight_axis]
        scale = self.ctx.book.derive(
            [w], step("symmetric_scale", axis=weight_axis, factor=float(x_scale) * factor),
            TensorType(DType.FLOAT32, (channels,)), base=f"{w}@int8_scale")
        out_type = self.graph.types[node.outputs[0]]
        is_conv = node.op_type in ("Conv", "FusedConv")
        acc_type = TensorType(DType.INT32, out_type.shape)
        acc = self._value(f"{node.outputs[0]}@int32", acc_type)
        if is_conv:
            attrs = {k: v for k, v in node.attrs.items() if k in CONV_ATTRS}
            pre.append(self._node("ConvInteger", [xq, wq, zero], [acc], attrs, node.name))
        else:
            pre.append(self._node("MatMulInteger", [xq, wq, zero], [acc], {}, node.name))
        epilogue = tuple(node.attr("epilogue", ()))
        extras = [e for e in node.inputs[3:] if e]
        last_needed = bias is None and not epilogue and not extras
        y = node.outputs[0] if last_needed else self._value(f"{node.outputs[0]}@dq", out_type)
        pre.append(self._node("DequantizeLinear", [acc, scale], [y],
                              {"axis": out_axis, "block_size": 0, "output_dtype": 0},
                              f"{node.name}_dequantize"))
        if bias is not None:
            done = not epilogue and not extras
            biased = node.outputs[0] if done else self._value(f"{node.outputs[0]}@bias", out_type)
            pre.append(self._node("Add", [y, bias], [biased], {}, f"{node.name}_bias"))
            y = biased
        if epilogue or extras:
            pre.append(self._node("FusedElementwise", [y, *extras], list(node.outputs),
                                  {"program": epilogue}, f"{node.name}_epilogue", "nerve"))
        self.ctx.count("int8_operands")
        return pre

    def _int8_plan(self, node: Node) -> tuple[int, int, float, str | None] | None:
        """(weight channel axis, output channel axis, scale factor, bias value) or None."""
        w = node.inputs[1]
        if w not in self.graph.params or node.inputs[0] in self.graph.params:
            return None
        w_shape = self.graph.types[w].shape
        rank = self.graph.types[node.outputs[0]].rank
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
        if node.op_type in ("Conv", "FusedConv"):
            return 0, 1, 1.0, self._channel_bias(bias, rank) if bias else None
        if len(w_shape) != 2:
            return None
        gemm = node.op_type == "Gemm" or bool(node.attr("gemm", 0))
        if not gemm:
            return 1, rank - 1, 1.0, bias
        if node.attr("transA", 0) or (bias and float(node.attr("beta", 1.0)) != 1.0):
            return None
        axis = 0 if node.attr("transB", 0) else 1
        return axis, rank - 1, float(node.attr("alpha", 1.0)), bias

    def _channel_bias(self, bias: str, rank: int) -> str | None:
        """A Conv bias (M,) shaped (M, 1, ...) so Add broadcasts it over the channels."""
        t = self.graph.types[bias]
        shape = (t.shape[0],) + (1,) * (rank - 2)
        if bias in self.graph.params:
            return self.ctx.book.derive([bias], step("reshape", shape=shape),
                                        TensorType(t.dtype, shape))
        if bias in self.graph.constants:
            return self._constant(f"{bias}@channel", self.graph.constants[bias].reshape(shape))
        return None

    def _quantize_activation(self, node: Node, x: str, pre: list[Node]
                             ) -> tuple[str, str, np.float32]:
        if x in self.quantized:
            return self.quantized[x]
        if x not in self.ranges:
            raise CompileError(
                f"precision int8: node {node.name!r} needs the calibrated range of its input "
                f"{x!r}; pass calibration=nerve.calibrate(model, samples) to nerve.compile (or "
                f"keep the node in float32 with precision_overrides={{{node.name!r}: 'fp32'}})"
            )
        low, high = (float(v) for v in self.ranges[x])
        scale, zero = activation_quantization(low, high)
        scale_name = self._constant(f"{x}@scale", np.array(scale, np.float32))
        zero_name = self._constant(f"{x}@zero_point", np.array(zero, np.uint8))
        q = self._value(f"{x}@uint8", TensorType(DType.UINT8, self.graph.types[x].shape))
        pre.append(self._node("QuantizeLinear", [x, scale_name, zero_name], [q],
                              {"axis": 1, "saturate": 1, "block_size": 0, "output_dtype": 0,
                               "precision": 0}, f"{x}_quantize"))
        self.quantized[x] = (q, zero_name, scale)
        return self.quantized[x]


__all__ = ["OperandNarrower", "activation_quantization"]
