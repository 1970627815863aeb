"""``nerve show model.onnx``: the IR, inputs, outputs, params and op histogram of a model."""

from __future__ import annotations

import argparse
from typing import Any

import onnx

from nerve.cli import _output as out
from nerve.cli._args import add_shape_argument, load_model
from nerve.ir import Graph, format_graph

DEFAULT_MAX_NODES = 40


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "show",
        help="print a model's IR, inputs, outputs, params and op histogram",
        description="Import an ONNX model and print what nerve sees: its IR (nodes with "
        "types), inputs, outputs, parameters and a histogram of its ops.",
    )
    parser.add_argument("model", help="path of an ONNX model")
    add_shape_argument(parser)
    parser.add_argument(
        "--all", action="store_true", help="print every node, param and constant of the IR"
    )
    parser.add_argument(
        "--max-nodes",
        type=int,
        default=DEFAULT_MAX_NODES,
        metavar="N",
        help=f"print at most N nodes of the IR (default {DEFAULT_MAX_NODES}; --all for every one)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    proto, graph = load_model(args.model, args.shape)
    out.heading(f"{args.model}  ({_provenance(proto)})")
    out.emit()
    out.emit(ir_text(graph, None if args.all else max(0, args.max_nodes)))
    out.emit()
    out.emit_table(_values_table("inputs", graph.inputs))
    out.emit_table(_values_table("outputs", graph.outputs))
    out.emit_table(_params_table(graph))
    out.emit_table(_histogram_table(graph))
    return 0


def ir_text(graph: Graph, max_nodes: int | None) -> str:
    """The IR as text; with ``max_nodes`` the node list is cut and params/constants summarised."""
    text = format_graph(graph, max_nodes=max_nodes)
    if max_nodes is None:
        return text
    lines = text.splitlines()
    # format_graph lists every param and constant; a big model would show nothing else.
    body = [ln for ln in lines[1:] if not ln.startswith(("  param ", "  const "))]
    summary = f"  # {len(graph.params)} params, {len(graph.constants)} constants (--all lists them)"
    if len(graph.nodes) > max_nodes:
        body.append(f"  # {len(graph.nodes)} nodes in all; --all prints every one")
    return "\n".join([lines[0], summary, *body])


def _provenance(proto: onnx.ModelProto) -> str:
    opsets = ", ".join(f"{imp.domain or 'ai.onnx'} {imp.version}" for imp in proto.opset_import)
    producer = " ".join(p for p in (proto.producer_name, proto.producer_version) if p)
    parts = [f"opset {opsets}", f"IR v{proto.ir_version}"]
    if producer:
        parts.append(f"from {producer}")
    return ", ".join(parts)


def _values_table(title: str, values: Any) -> out.Table:
    table = out.Table("name", "dtype", "shape", "elements", title=title, align="lllr")
    for v in values:
        table.add_row(v.name, v.dtype.value, out.fmt_shape(v.shape), out.fmt_count(v.type.numel))
    return table


def _params_table(graph: Graph) -> out.Table:
    table = out.Table("kind", "tensors", "elements", "bytes", title="parameters", align="lrrr")
    for kind, types in (
        ("params (weights)", [p.type for p in graph.params.values()]),
        ("constants", [graph.types[name] for name in graph.constants]),
    ):
        table.add_row(
            kind,
            len(types),
            out.fmt_count(sum(t.numel for t in types)),
            out.fmt_bytes(sum(t.nbytes for t in types)),
        )
    return table


def _histogram_table(graph: Graph) -> out.Table:
    table = out.Table("op", "count", "share", title="op histogram", align="lrr")
    total = max(1, len(graph.nodes))
    for op, count in graph.op_histogram().items():
        table.add_row(op, count, f"{100 * count / total:.0f}%")
    table.add_row("total", len(graph.nodes), "100%" if graph.nodes else "-")
    return table
