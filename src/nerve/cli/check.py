"""``nerve check model.onnx --target ane|cpu|host [--json] [--fix]``: a porting checklist.

Lists every restriction of the target the model breaks, grouped by class, with node names and
fixes, and a summary line. Exit status 1 when an error remains (after ``--fix``, when given).
"""

from __future__ import annotations

import argparse
from typing import Any

from nerve.cli import _output as out
from nerve.cli._args import add_model_arguments, load_model
from nerve.runtime.compile import check_graph_with_host


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check",
        help="list every restriction of a target a model breaks (exit 1 on errors)",
        description="Check an ONNX model against a target's restriction catalog: every "
        "violation grouped by class, with node names and fixes. Exit status 1 when any "
        "error remains.",
    )
    add_model_arguments(parser, target_help="target to check against (default host)")
    parser.add_argument("--fix", action="store_true",
                        help="repair the fixable violations first and list what remains")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    _, graph = load_model(args.model, args.shape)
    report = check_graph_with_host(graph, args.target, fix=args.fix)
    out.emit(report.to_json() if args.json else report.format())
    return report.exit_status
