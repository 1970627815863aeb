"""``nerve demo``: build small models in code, compile and run them, check them.

Each model of :data:`nerve.models.DEMO_MODELS` is built with the Python builder, compiled by
nerve, run, and compared with ``onnx.reference.ReferenceEvaluator`` (and ONNX Runtime when it
is installed). A result passes when ``max|nerve - ref| <= tol * max(1, max|ref|)``. The exit
status is 1 when any check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

import nerve
from nerve.cli import _output as out
from nerve.errors import NerveError
from nerve.frontend.onnx import load_onnx
from nerve.models import DEMO_MODELS, MODELS

DEFAULT_TOLERANCE = 1e-4
TIMED_RUNS = 3

Outputs = list[np.ndarray]


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="build, compile, run and check small built-in models",
        description="Build small models in code (by default: "
        + ", ".join(DEMO_MODELS)
        + "), compile and run them with nerve, and check the outputs against the ONNX "
        "reference evaluator (and ONNX Runtime when installed).",
    )
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help=f"models to run (default: {' '.join(DEMO_MODELS)}; available: {', '.join(MODELS)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    parser.add_argument(
        "--tol",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"relative tolerance of the checks (default {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument(
        "--no-ort", action="store_true", help="skip the ONNX Runtime check even if installed"
    )
    return parser


@dataclass
class DemoResult:
    """What one demo model did: sizes, times, and the error against each reference."""

    name: str
    nodes: int = 0
    params: int = 0
    compile_s: float = 0.0
    run_s: float = 0.0
    errors: dict[str, float] = field(default_factory=dict)  # reference name -> max abs err
    passed: dict[str, bool] = field(default_factory=dict)
    failure: str = ""

    @property
    def ok(self) -> bool:
        return not self.failure and all(self.passed.values())


def run(args: argparse.Namespace) -> int:
    names = list(args.models) or list(DEMO_MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        out.warn(f"unknown demo models {unknown}; available: {', '.join(MODELS)}")
        return 2
    references = reference_runners(use_ort=not args.no_ort)
    results = []
    for name in names:
        with out.Progress(f"demo {name}: build, compile, run, check"):
            results.append(run_one(name, args.seed, args.tol, references))
    out.emit_table(results_table(results, list(references), args.tol))
    if "onnxruntime" not in references and not args.no_ort:
        out.emit("(ONNX Runtime is not installed; checked against the reference evaluator only)")
    for r in results:
        if r.failure:
            out.emit(f"{r.name}: {r.failure}")
    failed = [r.name for r in results if not r.ok]
    out.emit(f"FAILED: {', '.join(failed)}" if failed else "all checks passed")
    return 1 if failed else 0


def reference_runners(use_ort: bool = True) -> dict[str, Callable[[onnx.ModelProto, Any], Outputs]]:
    """The references to check against: the ONNX reference evaluator, and ORT if present."""
    runners: dict[str, Callable[[onnx.ModelProto, Any], Outputs]] = {"reference": _run_reference}
    if use_ort and importlib.util.find_spec("onnxruntime") is not None:
        runners["onnxruntime"] = _run_ort
    return runners


def _run_reference(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> Outputs:
    from onnx.reference import ReferenceEvaluator

    return [np.asarray(o) for o in ReferenceEvaluator(model).run(None, dict(feeds))]


def _run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> Outputs:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return [np.asarray(o) for o in session.run(None, dict(feeds))]


def run_one(
    name: str,
    seed: int,
    tol: float,
    references: Mapping[str, Callable[[onnx.ModelProto, Any], Outputs]],
) -> DemoResult:
    """Build, compile, run and check one model of :data:`nerve.models.MODELS`."""
    spec = MODELS[name]
    result = DemoResult(name)
    model = spec.build(seed=seed)
    feeds = spec.inputs(seed=seed)
    try:
        with out.timed() as compile_s:
            graph = load_onnx(model)
            program = nerve.compile(graph)
        result.compile_s = compile_s[0]
        result.nodes = len(graph.nodes)
        result.params = sum(int(w.size) for w in graph.weights.values())
        got = program.run(feeds)
        times = []
        for _ in range(TIMED_RUNS):
            with out.timed() as run_s:
                program.run(feeds)
            times.append(run_s[0])
        result.run_s = statistics.median(times)
    except NerveError as exc:
        result.failure = f"{type(exc).__name__}: {exc}"
        return result
    ours = [got[o.name] for o in model.graph.output]
    for ref_name, runner in references.items():
        err, ok = compare(ours, runner(model, feeds), tol)
        result.errors[ref_name], result.passed[ref_name] = err, ok
    return result


def compare(
    ours: Sequence[np.ndarray], theirs: Sequence[np.ndarray], tol: float
) -> tuple[float, bool]:
    """Largest absolute error over all outputs, and whether every output is within
    ``tol * max(1, max|theirs|)`` (shapes and dtypes must match too)."""
    worst, ok = 0.0, len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        if a.shape != b.shape or a.dtype != b.dtype:
            return float("inf"), False
        if a.size == 0:
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        err = float(np.max(np.abs(a64 - b64)))
        scale = max(1.0, float(np.max(np.abs(b64))))
        worst = max(worst, err)
        ok = ok and err <= tol * scale  # NaN errors compare False: a NaN fails
    return worst, ok


def results_table(
    results: Sequence[DemoResult], references: Sequence[str], tol: float
) -> out.Table:
    columns = ["model", "nodes", "params", "compile ms", "run ms"]
    columns += [f"max abs err vs {r}" for r in references] + ["verdict"]
    table = out.Table(
        *columns,
        title=f"nerve demo (tolerance {tol:g} relative)",
        align="lrrrr" + "r" * len(references) + "l",
    )
    for r in results:
        if r.failure:
            cells = ["-"] * (4 + len(references))
            table.add_row(r.name, *cells, "ERROR")
            continue
        errs = [f"{r.errors[ref]:.2e}" if ref in r.errors else "-" for ref in references]
        table.add_row(
            r.name,
            r.nodes,
            out.fmt_count(r.params),
            out.fmt_ms(r.compile_s),
            out.fmt_ms(r.run_s),
            *errs,
            "ok" if r.ok else "FAIL",
        )
    return table
