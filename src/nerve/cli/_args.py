"""Arguments several subcommands share: ``--shape`` specs and loading a model with them.

>>> parse_shapes(["x=1,3,8,8", "batch=2"], input_names=["x", "y"])
{'x': (1, 3, 8, 8), 'batch': 2}
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import onnx

from nerve.compiler.targets import TARGETS
from nerve.errors import ShapeError, UnboundDimensionError
from nerve.frontend.onnx import ShapeSpec, load_onnx
from nerve.frontend.onnx.loader import read_model
from nerve.ir import Graph

SHAPE_HELP = (
    "bind a symbolic shape: NAME=D0,D1,... for a whole input, or SYMBOL=N for a named "
    "dimension (e.g. --shape batch=1); repeatable"
)


def add_shape_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shape", action="append", default=[], metavar="NAME=DIMS", help=SHAPE_HELP
    )


def add_model_arguments(parser: argparse.ArgumentParser, target_help: str) -> None:
    """The positional model path, ``--target`` (a built-in target, default host) and
    ``--shape``: the arguments of the subcommands that compile a model file."""
    parser.add_argument("model", help="path of an ONNX model")
    parser.add_argument("--target", default="host", choices=sorted(TARGETS), help=target_help)
    add_shape_argument(parser)


def parse_shapes(
    specs: Sequence[str], input_names: Sequence[str]
) -> dict[str, tuple[int, ...] | int]:
    """``--shape`` values as the ``shapes=`` mapping of :func:`nerve.compile`.

    A name that is a model input gets a tuple; any other name is a symbolic dimension and
    takes exactly one integer.
    """
    shapes: dict[str, tuple[int, ...] | int] = {}
    for spec in specs:
        name, sep, dims_text = spec.partition("=")
        name = name.strip()
        try:
            dims = tuple(int(d) for d in dims_text.split(",") if d.strip())
        except ValueError:
            dims = ()
            sep = ""
        if not sep or not name or any(d < 0 for d in dims):
            raise ShapeError(
                f"--shape {spec!r}: expected NAME=D0,D1,... (an input) or SYMBOL=N, with "
                "non-negative integers"
            )
        if name in input_names:
            shapes[name] = dims
        elif len(dims) != 1:
            raise ShapeError(
                f"--shape {spec!r}: {name!r} is not an input of the model (inputs: "
                f"{list(input_names)}), so it must be a symbolic dimension with one value"
            )
        else:
            shapes[name] = dims[0]
    return shapes


def input_names(proto: onnx.ModelProto) -> list[str]:
    """The model's runtime inputs (graph inputs that are not initializers)."""
    initializers = {t.name for t in proto.graph.initializer}
    return [v.name for v in proto.graph.input if v.name not in initializers]


def load_model(
    path: str,
    shape_specs: Sequence[str],
    extra_shapes: ShapeSpec | None = None,
    proto: onnx.ModelProto | None = None,
) -> tuple[onnx.ModelProto, Graph]:
    """Read ``path`` (unless its ``proto`` is given) and import it with the ``--shape``
    bindings (plus ``extra_shapes``).

    An unbound dimension is reported with the ``--shape`` spelling that fixes it.
    """
    proto = proto if proto is not None else read_model(path)
    names = input_names(proto)
    shapes: dict[str, Sequence[int] | int] = dict(extra_shapes or {})
    shapes.update(parse_shapes(shape_specs, names))
    try:
        graph = load_onnx(proto, shapes)
    except UnboundDimensionError as exc:
        listed = ", ".join(f"input {i!r} axis {a} ({s!r})" for i, a, s in exc.unbound)
        symbols = sorted({s for _, _, s in exc.unbound if s not in ("?", "rank unknown")})
        fixes = [f"--shape {s}=N" for s in symbols]
        fixes += [f"--shape {i}=D0,D1,..." for i in dict.fromkeys(i for i, _, _ in exc.unbound)]
        raise ShapeError(
            f"{path}: unbound dimensions: {listed}. nerve compiles static shapes; give them "
            f"with {' or '.join(fixes)}"
        ) from None
    return proto, graph
