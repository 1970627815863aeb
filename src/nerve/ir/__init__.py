"""nerve's graph IR: static-shape graphs whose weights live apart from their structure."""

# fused_ops registers the nerve-domain fused ops' type rules on import.
from nerve.ir import fused_ops
from nerve.ir.dtypes import DType
from nerve.ir.graph import NERVE_DOMAIN, ONNX_DOMAIN, Graph, Node, Param, Value
from nerve.ir.infer import fold_shape_op, infer_node
from nerve.ir.key import structural_description, structural_key
from nerve.ir.opset import NERVE_OPS, ONNX_OPSET, register_op
from nerve.ir.printer import format_graph
from nerve.ir.types import TensorType
from nerve.ir.verify import verify

__all__ = [
    "NERVE_DOMAIN",
    "NERVE_OPS",
    "ONNX_DOMAIN",
    "ONNX_OPSET",
    "DType",
    "Graph",
    "Node",
    "Param",
    "TensorType",
    "Value",
    "fold_shape_op",
    "format_graph",
    "fused_ops",
    "infer_node",
    "register_op",
    "structural_description",
    "structural_key",
    "verify",
]
