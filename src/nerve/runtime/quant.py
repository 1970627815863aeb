"""Calibration and accuracy reports for reduced precision (bf16, int8).

``nerve.calibrate(model, samples)`` runs the float32 model on sample inputs and records the
range of every float tensor; int8 compiles read those ranges (``nerve.compile(model,
precision="int8", calibration=cal)``). ``nerve.accuracy(model, samples, precision="bf16")``
compiles the model twice — float32 and the precision asked for — runs both on the samples and
reports the error of the second against the first.

Samples are a sequence of feed dicts, or one mapping (e.g. an ``.npz`` file's arrays) from
input name to an array that is either one input (the input's shape) or a stack of inputs (one
more leading axis).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nerve.engines.host import evaluate
from nerve.errors import InputError
from nerve.frontend.onnx import ShapeSpec
from nerve.ir import DType, Graph, TensorType
from nerve.runtime.compile import compile as compile_program
from nerve.runtime.compile import load_graph
from nerve.runtime.program import Program

Samples = Sequence[Mapping[str, Any]] | Mapping[str, Any]
CALIBRATION_METHODS = ("minmax", "percentile")
# Values per tensor per sample kept for percentiles (a strided subsample beyond it).
_PERCENTILE_KEEP = 1 << 16


class Calibration(dict[str, tuple[float, float]]):
    """Activation ranges by tensor name: ``{name: (low, high)}`` under ``method``.

    A plain dict of floats, so it travels as a compile option (hashed into the structural
    key, saved with programs). ``minmax`` and ``percentiles`` keep both statistics;
    :meth:`using` switches between them.
    """

    def __init__(self, minmax: Mapping[str, tuple[float, float]],
                 percentiles: Mapping[str, tuple[float, float]], method: str = "minmax",
                 percentile: float = 99.99, samples: int = 0) -> None:
        if method not in CALIBRATION_METHODS:
            raise InputError(f"calibration method {method!r} is not one of "
                             f"{', '.join(CALIBRATION_METHODS)}")
        super().__init__(minmax if method == "minmax" else percentiles)
        self.minmax, self.percentiles = dict(minmax), dict(percentiles)
        self.method, self.percentile, self.samples = method, percentile, samples

    def using(self, method: str) -> Calibration:
        """The same statistics with ``method``'s ranges."""
        return Calibration(self.minmax, self.percentiles, method, self.percentile, self.samples)


def iter_samples(samples: Samples, graph: Graph) -> Iterator[dict[str, np.ndarray]]:
    """Feed dicts from ``samples`` (see the module docstring), checked against the inputs."""
    if isinstance(samples, Mapping):
        yield from _unstack(samples, graph)
        return
    for i, feeds in enumerate(samples):
        if not isinstance(feeds, Mapping):
            raise InputError(f"sample {i} is a {type(feeds).__name__}, not a dict of inputs")
        yield {k: np.asarray(v) for k, v in feeds.items()}


def _unstack(arrays: Mapping[str, Any], graph: Graph) -> Iterator[dict[str, np.ndarray]]:
    counts = set()
    stacked: dict[str, np.ndarray] = {}
    for value in graph.inputs:
        if value.name not in arrays:
            raise InputError(f"the samples have no array for input {value.name!r}; they have "
                             f"{sorted(arrays)}")
        a = np.asarray(arrays[value.name])
        if a.shape == value.type.shape:
            a = a[None]
        elif a.shape[1:] != value.type.shape:
            raise InputError(f"samples[{value.name!r}] has shape {a.shape}; expected "
                             f"{value.type.shape} or a stack of them")
        stacked[value.name] = a
        counts.add(a.shape[0])
    if len(counts) > 1:
        raise InputError(f"the sample stacks differ in length: {sorted(counts)}")
    for i in range(counts.pop() if counts else 0):
        yield {name: a[i] for name, a in stacked.items()}


def _model_graph(model: Any, shapes: ShapeSpec | None) -> tuple[Graph, Mapping[str, np.ndarray]]:
    if isinstance(model, Program):
        if model.origin is None or model.origin.graph is None:
            raise InputError("this Program does not know the model it came from; calibrate the "
                             "model itself")
        graph = model.origin.graph.copy()
        graph.weights = {n: w for n, w in model.weights.items() if n in graph.params}
        return graph, graph.weights
    graph = load_graph(model, shapes)
    return graph, graph.weights


def activations(graph: Graph, weights: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]
                ) -> Iterator[tuple[str, np.ndarray]]:
    """Every float tensor the float32 model computes for ``feeds``, as (name, value), in order.

    The graph is interpreted node by node with the host kernels, so every intermediate keeps
    the name it has in the model (the names int8 compiles look ranges up by).
    """
    env: dict[str, np.ndarray] = {**graph.constants, **weights}
    for value in graph.inputs:
        if value.name not in feeds:
            raise InputError(f"a sample lacks input {value.name!r}")
        env[value.name] = np.asarray(feeds[value.name], value.type.dtype.numpy)
        yield value.name, env[value.name]
    for node in graph.nodes:
        args = [env[i] if i else None for i in node.inputs]
        types: list[TensorType | None] = [graph.types[i] if i else None for i in node.inputs]
        for name, out in zip(node.outputs, evaluate(node, *args, input_types=types)):
            if name:
                env[name] = out
                if graph.types[name].dtype in (DType.FLOAT32, DType.FLOAT16, DType.FLOAT64):
                    yield name, out


def calibrate(model: Any, samples: Samples, *, method: str = "minmax",
              percentile: float = 99.99, shapes: ShapeSpec | None = None) -> Calibration:
    """Ranges of every float tensor of ``model`` (an ONNX model, ir.Graph or Program) over
    ``samples``: min/max, and the ``percentile`` (low: 100 - percentile) of all values.

    >>> import numpy as np, nerve
    >>> from nerve.ir import DType, Graph, Node, TensorType
    >>> g = Graph("g"); g.add_input("x", TensorType(DType.FLOAT32, (2,)))
    >>> _ = g.add_node(Node("Relu", ["x"], ["y"]), {"y": TensorType(DType.FLOAT32, (2,))})
    >>> g.set_outputs(["y"])
    >>> cal = nerve.calibrate(g, [{"x": np.array([-1.0, 2.0], np.float32)}])
    >>> cal["x"], cal["y"]
    ((-1.0, 2.0), (0.0, 2.0))
    """
    if not 50.0 < percentile <= 100.0:
        raise InputError(f"percentile {percentile} must lie in (50, 100]")
    graph, weights = _model_graph(model, shapes)
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    kept: dict[str, list[np.ndarray]] = {}
    count = 0
    for feeds in iter_samples(samples, graph):
        count += 1
        for name, value in activations(graph, weights, feeds):
            flat = np.asarray(value, np.float64).reshape(-1)
            flat = flat[np.isfinite(flat)]
            if not flat.size:
                continue
            low[name] = min(low.get(name, np.inf), float(flat.min()))
            high[name] = max(high.get(name, -np.inf), float(flat.max()))
            stride = max(1, flat.size // _PERCENTILE_KEEP)
            kept.setdefault(name, []).append(flat[::stride])
    if not count:
        raise InputError("calibration needs at least one sample")
    tails = {}
    for name, parts in kept.items():
        values = np.concatenate(parts)
        lo, hi = np.percentile(values, [100.0 - percentile, percentile])
        tails[name] = (float(lo), float(hi))
    minmax = {name: (low[name], high[name]) for name in low}
    return Calibration(minmax, tails, method, percentile, count)


@dataclass
class OutputError:
    """Error of one output against float32: relative to the reference's magnitude."""

    name: str
    max_abs: float
    max_rel: float  # max |y - ref| / max |ref|
    mean_rel: float  # mean |y - ref| / mean |ref|
    top1: float | None = None  # argmax agreement over the last axis (classifier outputs)


@dataclass
class AccuracyReport:
    """What ``precision`` costs in accuracy against float32 on some samples."""

    precision: str
    target: str
    samples: int
    outputs: list[OutputError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"accuracy of {self.precision} on {self.target} vs fp32 ({self.samples} "
                 "samples)"]
        for o in self.outputs:
            top1 = f"  top-1 agreement {o.top1:.2%}" if o.top1 is not None else ""
            lines.append(f"  {o.name}: max rel {o.max_rel:.3e}  mean rel {o.mean_rel:.3e}  "
                         f"max abs {o.max_abs:.3e}{top1}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def accuracy(model: Any, samples: Samples, *, precision: str = "bf16", target: str = "host",
             calibration: Mapping[str, tuple[float, float]] | None = None,
             shapes: ShapeSpec | None = None, **options: Any) -> AccuracyReport:
    """Run ``model`` in float32 (host) and in ``precision`` on ``target`` over ``samples``;
    report max and mean relative error per float output and, for outputs with a class axis
    (last axis > 1), top-1 agreement. int8 without ``calibration`` calibrates (min/max) on the
    same samples.
    """
    graph, _ = _model_graph(model, shapes)
    feeds = list(iter_samples(samples, graph))
    if not feeds:
        raise InputError("an accuracy report needs at least one sample")
    report = AccuracyReport(precision, target, len(feeds))
    if precision == "int8" and calibration is None:
        calibration = calibrate(model, feeds, shapes=shapes)
        report.notes.append("int8 calibrated (min/max) on the same samples")
    if calibration is not None:
        options["calibration"] = calibration
    reference = compile_program(graph, "host", cache=False)
    candidate = compile_program(graph, target, precision=precision, cache=False, **options)
    report.notes += [n for n in candidate.report.notes if n.startswith("precision")]
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for f in feeds:
        want, got = reference.run(f), candidate.run(f)
        for name, ref in want.items():
            if np.asarray(ref).dtype.kind == "f":
                pairs.setdefault(name, []).append((np.asarray(ref), np.asarray(got[name])))
    report.outputs = [_output_error(name, runs) for name, runs in pairs.items()]
    return report


def _output_error(name: str, runs: Iterable[tuple[np.ndarray, np.ndarray]]) -> OutputError:
    refs, gots = zip(*runs)
    ref = np.concatenate([r.astype(np.float64).reshape(-1) for r in refs])
    got = np.concatenate([g.astype(np.float64).reshape(-1) for g in gots])
    diff = np.abs(got - ref)
    peak, mean = float(np.max(np.abs(ref), initial=0.0)), float(np.mean(np.abs(ref)))
    top1 = None
    if refs[0].ndim >= 1 and refs[0].shape[-1] > 1:
        agree = [np.argmax(r, axis=-1) == np.argmax(g, axis=-1) for r, g in zip(refs, gots)]
        top1 = float(np.mean(np.concatenate([a.reshape(-1) for a in agree])))
    return OutputError(
        name, float(diff.max(initial=0.0)), float(diff.max(initial=0.0)) / peak if peak else 0.0,
        float(diff.mean()) / mean if mean else 0.0, top1)


__all__ = [
    "CALIBRATION_METHODS",
    "AccuracyReport",
    "Calibration",
    "OutputError",
    "accuracy",
    "activations",
    "calibrate",
    "iter_samples",
]
