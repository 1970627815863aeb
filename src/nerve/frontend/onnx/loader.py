"""Reading ONNX models: files, bytes, protos; external data; old opsets; validation."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx.checker
import onnx.inliner
import onnx.version_converter

from nerve.errors import ModelFormatError

# Oldest opset nerve imports directly; older models go through onnx's version converter.
MIN_OPSET = 13

ModelSource = str | os.PathLike[str] | bytes | onnx.ModelProto


def read_model(model: ModelSource) -> onnx.ModelProto:
    """Parse ``model`` into a checked ModelProto with external data loaded.

    >>> from onnx import helper, TensorProto
    >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    >>> read_model(helper.make_model(g).SerializeToString()).graph.node[0].op_type
    'Relu'
    """
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, (bytes, bytearray, memoryview)):
        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as exc:
            raise ModelFormatError(f"the bytes given are not an ONNX model: {exc}") from None
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelFormatError(f"model file {str(path)!r} does not exist")
        try:
            proto = onnx.load(str(path), load_external_data=True)
        except FileNotFoundError as exc:
            raise ModelFormatError(
                f"{path}: an external data file is missing ({exc.filename}); keep the .onnx "
                "file next to its data files"
            ) from None
        except Exception as exc:
            if "should be stored in" in str(exc):  # onnx's words for a missing external file
                raise ModelFormatError(
                    f"{path}: an external data file is missing or unreadable ({exc}); keep the "
                    ".onnx file next to its data files"
                ) from None
            raise ModelFormatError(f"{path} is not a valid ONNX model: {exc}") from None
    else:
        raise ModelFormatError(
            f"cannot read a model from {type(model).__name__}; give a path, bytes, an "
            "onnx.ModelProto or a nerve.ir.Graph"
        )
    if not proto.HasField("graph"):
        raise ModelFormatError("the ONNX model has no graph (is the file truncated?)")
    _check(proto)
    proto = _upgrade_opset(proto)
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    return proto


def _check(proto: onnx.ModelProto) -> None:
    try:
        # Size-limited check: large models (>2 GiB) go through their path instead.
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFormatError(f"the ONNX model is malformed: {first}") from None
    except ValueError as exc:  # e.g. "Message onnx.ModelProto exceeds maximum protobuf size"
        raise ModelFormatError(f"the ONNX model cannot be checked: {exc}") from None


def default_opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _upgrade_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    version = default_opset(proto)
    if version >= MIN_OPSET:
        return proto
    try:
        upgraded = onnx.version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:
        raise ModelFormatError(
            f"the model uses ONNX opset {version}; nerve imports opset {MIN_OPSET} and newer, "
            f"and onnx's version converter could not upgrade it ({exc}). Re-export the model "
            f"with opset >= {MIN_OPSET}."
        ) from None
    # The converter relabels Hardmax without its opset-13 change of meaning; fix it up here.
    from nerve.frontend.onnx.importers.reduce import coerce_upgraded_hardmax

    coerce_upgraded_hardmax(upgraded.graph)
    return upgraded
