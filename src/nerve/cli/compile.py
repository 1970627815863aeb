"""``nerve compile model.onnx --target T --report``: run the compiler and show what it did.

Prints the CompileReport — per pass its wall time, nodes in and out and the rewrites it
applied by name and count — and the memory plan's peak scratch bytes against the sum of all
intermediates. ``--dump-ir PASS`` prints the IR after that pass. ``--precision bf16 --accuracy
samples.npz`` also prints the error of that precision against fp32 on the samples.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from nerve.cli import _output as out
from nerve.cli._args import add_model_arguments, load_model
from nerve.compiler import PASS_NAMES
from nerve.compiler import compile as compile_plan
from nerve.engines.host import evaluate
from nerve.ir import Graph, format_graph

if TYPE_CHECKING:
    from nerve.runtime.quant import AccuracyReport


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "compile",
        help="compile a model for a target and report what each pass did",
        description="Compile an ONNX model for a target (host, cpu, ane) and print the compile "
        "report: per pass its time, nodes in/out and rewrites; the scratch arena against the "
        "sum of all intermediates.",
    )
    add_model_arguments(parser, target_help="compilation target (default host)")
    parser.add_argument("--report", action="store_true",
                        help="print the full compile report (default: a one-line summary)")
    parser.add_argument("--dump-ir", metavar="PASS", choices=PASS_NAMES, action="append",
                        default=[], help=f"print the IR after PASS ({', '.join(PASS_NAMES)}); "
                        "repeatable")
    parser.add_argument("--no-fuse", action="store_true", help="skip the fusion rewrites")
    parser.add_argument("--precision", default=None, help="the target's precision policy")
    parser.add_argument("--accuracy", metavar="SAMPLES.npz", default=None,
                        help="after compiling, run the model in fp32 and in --precision on these "
                        "samples (arrays named by input; a leading axis stacks samples) and "
                        "print max/mean relative error and top-1 agreement (int8: the samples "
                        "also calibrate the activation ranges)")
    parser.add_argument("--no-check", action="store_true",
                        help="do not stop at restriction errors (see `nerve check`)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    _, graph = load_model(args.model, args.shape)
    dumps: list[tuple[str, str]] = []

    def observe(name: str, g: Graph) -> None:
        if name in args.dump_ir:
            dumps.append((name, format_graph(g)))

    options: dict[str, Any] = {"fuse": not args.no_fuse, "check": not args.no_check}
    if args.precision:
        options["precision"] = args.precision
    if args.precision == "int8" and args.accuracy:
        from nerve.runtime.quant import calibrate

        # int8 needs activation ranges: the accuracy samples calibrate them (min/max).
        options["calibration"] = calibrate(graph, _samples(args.accuracy))
    plan = compile_plan(graph, args.target, options, evaluate=evaluate, observer=observe)
    report = plan.report
    accuracy = _accuracy(args, graph, options) if args.accuracy else None
    if args.json:
        extra = {"accuracy": asdict(accuracy)} if accuracy is not None else {}
        out.emit(json.dumps({**report.to_dict(), "key": plan.key,
                             "dumps": dict(dumps), **extra}, indent=2))
        return 0
    for name, text in dumps:
        out.heading(f"IR after {name}")
        out.emit(text)
        out.emit()
    if args.report:
        out.emit(report.format())
    else:
        rewrites = sum(p.rewrite_count for p in report.passes)
        out.emit(
            f"{args.model}: compiled for {report.target} in {out.fmt_ms(report.total_seconds)}: "
            f"{len(plan.graph.nodes)} nodes in {len(plan.segments)} segments, {rewrites} "
            f"rewrites, scratch {report.peak_scratch_bytes:,} B (--report for details)"
        )
    if accuracy is not None:
        out.emit(accuracy.format())
    return 0


def _accuracy(args: argparse.Namespace, graph: Graph, options: dict[str, Any]) -> AccuracyReport:
    """The accuracy of the compiled precision against fp32 on the ``--accuracy`` samples."""
    from nerve.runtime.quant import accuracy

    extra = {k: v for k, v in options.items() if k != "precision"}
    return accuracy(graph, _samples(args.accuracy), precision=args.precision or "fp32",
                    target=args.target, **extra)


def _samples(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as samples:
        return {name: samples[name] for name in samples.files}
