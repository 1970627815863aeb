"""GEMM kernels: nerve's fp32, bf16 and int8 MatMul against torch (bf16, fp32) and OpenBLAS.

    python bench/kernels.py [--shapes 128x768x3072,2048x2048x2048] [--threads 2]
                            [--seconds 2] [--quick] [--runtimes nerve-bf16,torch-bf16]
                            [--max-run-s 5] [--no-write]

Each nerve cell is a one-node model, ``y = MatMul(x, w)`` with x an M x K input and w a K x N
weight (a Param), compiled for the ``cpu`` target at the cell's precision (int8: calibrated on
x with ``nerve.calibrate``) and run with ``Program.run(feeds, out=preallocated)``; so its time
includes the call itself and converting x to bf16 / quantizing it, as a model's MatMul would.
torch runs ``torch.matmul(a, b, out=c)`` on bf16 / fp32 tensors made beforehand (bf16 goes to
oneDNN where torch picks it); OpenBLAS is ``cblas_sgemm`` of the scipy-openblas32 wheel that
nerve's engine links (numpy's matmul when that wheel is missing; the table says which). Every
runtime gets ``--threads`` threads (NERVE_THREADS and ``threads=``, ``torch.set_num_threads``,
OpenBLAS's own setter).

Rate = 2·M·K·N / time (GFLOP/s; GOP/s for int8) from the best of interleaved runs (the machine
may be shared; medians are in the JSON). Shapes run from the least work to the most; a cell
whose single run would exceed ``--max-run-s`` at the rate that runtime reached on a smaller
shape is skipped (a host-emulated int8 GEMM takes about a minute at 2048^3).

Writes the ``## GEMM kernels`` section of ``bench/RESULTS.md`` and ``bench/baselines/kernels.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
BASELINE = HERE / "baselines" / "kernels.json"
SECTION = "## GEMM kernels"

Shape = tuple[int, int, int]  # (M, K, N)
SHAPES: tuple[Shape, ...] = (
    (128, 768, 3072),
    (128, 768, 768),
    (128, 3072, 768),
    (1, 768, 3072),
    (2048, 2048, 2048),
)
RUNTIMES = ("nerve-fp32", "nerve-bf16", "nerve-int8", "torch-bf16", "torch-fp32", "openblas-fp32")
# Issue 6's kernel targets, GFLOP/s of bf16 GEMM, stated for AMX.
BF16_TARGETS: dict[Shape, float] = {(128, 768, 3072): 2000.0, (2048, 2048, 2048): 2500.0}
ROUNDS = 3
SETTLE_S = 0.3  # pause before each block (see _time_cells)
# A cell's product against numpy's fp32 x @ w (max |error| / max |x @ w|): beyond this the
# table flags the rate, since a fast wrong kernel is not a result.
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "int8": 1e-1}
QUICK_SECONDS = 0.3


# ---- pure helpers ----------------------------------------------------------------------------


def parse_shapes(text: str) -> tuple[Shape, ...]:
    """``"128x768x3072,1x768x3072"`` -> ((128, 768, 3072), (1, 768, 3072)): M x K x N each.

    >>> parse_shapes("2x3x4")
    ((2, 3, 4),)
    """
    shapes = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        dims = part.lower().split("x")
        if len(dims) != 3 or not all(d.strip().isdigit() and int(d) > 0 for d in dims):
            raise ValueError(f"shape {part!r} is not M x K x N with positive integers "
                             "(e.g. 128x768x3072)")  # fmt: skip
        shapes.append((int(dims[0]), int(dims[1]), int(dims[2])))
    if not shapes:
        raise ValueError("no shape given")
    return tuple(shapes)


def parse_runtimes(text: str) -> tuple[str, ...]:
    """The runtimes named in ``text`` (comma-separated), in :data:`RUNTIMES` order."""
    names = {p.strip() for p in text.split(",") if p.strip()}
    unknown = sorted(names - set(RUNTIMES))
    if unknown:
        raise ValueError(f"unknown runtime(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(RUNTIMES)}")  # fmt: skip
    if not names:
        raise ValueError("no runtime given")
    return tuple(r for r in RUNTIMES if r in names)


def shape_key(shape: Shape) -> str:
    """``(128, 768, 3072)`` -> ``"128x768x3072"``."""
    return "x".join(str(d) for d in shape)


def ops(shape: Shape) -> int:
    """Multiply-adds counted twice: 2·M·K·N."""
    m, k, n = shape
    return 2 * m * k * n


def rate(shape: Shape, seconds: float) -> float:
    """GFLOP/s (GOP/s) of one ``shape`` product taking ``seconds``."""
    return ops(shape) / seconds / 1e9


def blocks(estimate_s: float, seconds: float, rounds: int) -> int:
    """Timed runs per round so one runtime gets about ``seconds`` over ``rounds`` rounds."""
    return max(1, min(100_000, int(seconds / rounds / max(estimate_s, 1e-7))))


def too_slow(shape: Shape, best_rate: float | None, max_run_s: float) -> float | None:
    """The estimated seconds of one run of ``shape`` when that exceeds ``max_run_s`` at
    ``best_rate`` (GFLOP/s on a smaller shape); None when it may run."""
    if best_rate is None or best_rate <= 0:
        return None
    estimate = ops(shape) / (best_rate * 1e9)
    return estimate if estimate > max_run_s else None


def product_error(reference: np.ndarray, got: np.ndarray) -> float:
    """max |got - reference| / max |reference| (inf when the shapes differ)."""
    if np.shape(reference) != np.shape(got):
        return float("inf")
    ref = np.asarray(reference, np.float64)
    peak = float(np.abs(ref).max()) if ref.size else 0.0
    worst = float(np.abs(np.asarray(got, np.float64) - ref).max()) if ref.size else 0.0
    return worst / peak if peak else worst


def cell_text(cells: Mapping[str, Any], runtime: str) -> str:
    """A table cell: the best rate, flagged when the product was wrong."""
    cell = cells.get(runtime)
    if not cell:
        return "—"
    text = _fmt_rate(cell.get("gops_best"))
    if cell.get("error_ok") is False:
        text += f" (wrong: error {cell['max_rel_err']:.1e})"
    return text


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.0f}" if v >= 10 else f"{v:.2f}"


def section(results: Mapping[str, Any], machine: Mapping[str, Any],
            settings: Mapping[str, Any]) -> str:  # fmt: skip
    """The ``## GEMM kernels`` section for ``results`` (the JSON's ``shapes``)."""
    from _results import feature_summary, lowp_hardware_note

    features = machine["features"]
    blas = settings.get("blas", "OpenBLAS")
    lines = [
        SECTION,
        "",
        f"Generated by `python bench/kernels.py` on {machine['date']}: {machine['cpu']}, "
        f"{settings['threads']} threads for every runtime. Each nerve cell is a one-node "
        "MatMul model (x: M x K input, w: K x N weight) compiled for the cpu target at the "
        "column's precision and run with `Program.run(feeds, out=...)` (the time includes the "
        "call and converting / quantizing x); torch runs `torch.matmul(a, b, out=c)` on "
        f"tensors made beforehand; the fp32 BLAS column is {blas}. Rates are 2·M·K·N / the "
        f"best of interleaved runs (about {settings['seconds_per_cell']:g} s per cell; "
        "medians in `bench/baselines/kernels.json`), in GFLOP/s (GOP/s for int8).",
        "",
        f"CPU features: {feature_summary(features)}. **{lowp_hardware_note(features)}**",
        "",
        "| M x K x N | nerve fp32 | nerve bf16 | nerve int8 (GOP/s) | torch bf16 | torch fp32 "
        "| OpenBLAS fp32 | nerve bf16 / torch bf16 | bf16 target (AMX) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, entry in results.items():
        cells = entry.get("cells", {})

        def best(runtime: str, cells: Mapping[str, Any] = cells) -> float | None:
            value = cells.get(runtime, {}).get("gops_best")
            return None if value is None else float(value)

        ours, peer = best("nerve-bf16"), best("torch-bf16")
        ratio = None if ours is None or not peer else ours / peer
        target = BF16_TARGETS.get(tuple(entry["shape"]))
        target_text = "—"
        if target is not None:
            mark = "" if ours is None else (" ✓" if ours >= target else " ✗")
            target_text = f"≥ {target:.0f}{mark}"
        rates = " | ".join(
            cell_text(cells, r)
            for r in ("nerve-fp32", "nerve-bf16", "nerve-int8", "torch-bf16", "torch-fp32",
                      "openblas-fp32")
        )  # fmt: skip
        lines.append(
            f"| {key} | {rates} | {'—' if ratio is None else f'{ratio:.2f}'} | {target_text} |"
        )
    lines += [
        "",
        "Targets (issue 6, for AMX): nerve bf16 ≥ 2.0 TFLOP/s at 128x768x3072 and ≥ 2.5 "
        "TFLOP/s at 2048x2048x2048. The issue's probe on an AMX machine: oneDNN bf16 2.1 "
        "TFLOP/s at both; OpenBLAS fp32 0.31 (2048^3) and 0.25 (128x768x3072).",
        "",
    ]
    plans: dict[str, set[str]] = {}
    skipped = []
    for key, entry in results.items():
        for runtime, plan in entry.get("plans", {}).items():
            plans.setdefault(runtime, set()).add(plan)
        skipped += [f"{key} {r} ({why})" for r, why in entry.get("skipped", {}).items()]
    if plans:
        lines.append(
            "nerve's plans (host segments are emulated ops): "
            + "; ".join(f"{r}: {' | '.join(sorted(p))}" for r, p in sorted(plans.items()))
            + "."
        )
        lines.append("")
    if skipped:
        lines.append("Skipped: " + "; ".join(skipped) + ".")
        lines.append("")
    lines.append(
        f"Load average before/after: {machine['loadavg_before']} / {machine['loadavg_after']}."
    )
    lines.append("")
    return "\n".join(lines)


# ---- the runtimes ----------------------------------------------------------------------------


@dataclass
class Cell:
    """One runtime ready to multiply one shape: ``call()`` runs one product."""

    runtime: str
    call: Callable[[], object]
    output: Callable[[], np.ndarray]  # the last call's product, as float32
    plan: str = ""  # nerve: the program's engine segments
    times: list[float] = field(default_factory=list)


def _operands(shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    m, k, n = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = (rng.standard_normal((k, n), dtype=np.float32) * (1.0 / math.sqrt(k))).astype(np.float32)
    return x, w


def _nerve_cell(shape: Shape, precision: str, threads: int) -> Cell:
    from _results import segments_summary

    import nerve
    from nerve.ir import DType, Graph, Node, TensorType

    m, k, n = shape
    x, w = _operands(shape)
    graph = Graph(f"matmul_{shape_key(shape)}")
    graph.add_input("x", TensorType(DType.FLOAT32, (m, k)))
    graph.add_param("w", w)
    graph.add_node(Node("MatMul", ["x", "w"], ["y"]), {"y": TensorType(DType.FLOAT32, (m, n))})
    graph.set_outputs(["y"])
    options: dict[str, Any] = {}
    if precision == "int8":
        options["calibration"] = nerve.calibrate(graph, [{"x": x}])
    program = nerve.compile(graph, target="cpu", threads=threads, precision=precision,
                            **options)  # fmt: skip
    feeds = {"x": x}
    out = {"y": np.empty((m, n), np.float32)}
    return Cell(f"nerve-{precision}", lambda: program.run(feeds, out=out), lambda: out["y"],
                segments_summary(program.report.segments))  # fmt: skip


def _torch_cell(shape: Shape, dtype: str, threads: int) -> Cell:
    import torch

    torch.set_num_threads(threads)
    x, w = _operands(shape)
    kind = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.from_numpy(x).to(kind), torch.from_numpy(w).to(kind)
    c = torch.empty((shape[0], shape[2]), dtype=kind)

    def call() -> object:
        with torch.inference_mode():
            return torch.matmul(a, b, out=c)

    return Cell(f"torch-{dtype}", call, lambda: c.float().numpy())


def _blas_cell(shape: Shape, threads: int) -> tuple[Cell, str]:
    """cblas_sgemm of the scipy-openblas32 wheel (nerve's BLAS), or numpy's matmul."""
    import ctypes

    m, k, n = shape
    x, w = _operands(shape)
    y = np.empty((m, n), np.float32)
    try:
        import scipy_openblas32 as sob

        from nerve.engines.native.toolchain import find_blas

        blas = find_blas()
        if blas is None:
            raise ImportError("scipy_openblas32")
        getattr(sob.dll, blas.set_threads)(threads)
        sgemm = getattr(sob.dll, f"{blas.prefix}cblas_sgemm")
    except (ImportError, AttributeError):
        cell = Cell("openblas-fp32", lambda: np.matmul(x, w, out=y), lambda: y)
        return cell, "numpy's matmul (its BLAS)"
    f32, i32, ptr = ctypes.c_float, ctypes.c_int, ctypes.c_void_p
    sgemm.argtypes = [i32, i32, i32, i32, i32, i32, f32, ptr, i32, ptr, i32, f32, ptr, i32]
    sgemm.restype = None
    row_major, no_trans = 101, 111
    args = (row_major, no_trans, no_trans, m, n, k, 1.0, x.ctypes.data, k, w.ctypes.data, n,
            0.0, y.ctypes.data, n)  # fmt: skip
    name = f"cblas_sgemm of scipy-openblas32 {blas.version} (nerve's BLAS)"
    keep = (x, w, y)  # args holds raw pointers: the arrays must outlive the cell

    def call() -> object:
        return sgemm(*args), keep

    return Cell("openblas-fp32", call, lambda: y), name


def _time_cells(cells: Sequence[Cell], seconds: float, rounds: int, max_run_s: float) -> None:
    """Interleaved timing into each cell's ``times``: ``rounds`` rounds, each giving every cell
    a block of runs sized from its fastest first runs; a cell whose first run alone exceeds
    ``max_run_s`` keeps just that one. Each block starts after a pause and one untimed run, so
    the previous runtime's idle threads have stopped spinning (OpenMP spins for 200 ms by
    default, and two cores have no room for that)."""
    estimates = []
    for cell in cells:
        time.sleep(SETTLE_S)
        cell.call()  # first-call costs: threads starting, pages, packing
        spent = 0.0
        while len(cell.times) < 5 and spent < seconds / 4:
            start = time.perf_counter()
            cell.call()
            cell.times.append(time.perf_counter() - start)
            spent += cell.times[-1]
            if cell.times[-1] > max_run_s:
                break
        estimates.append(min(cell.times))
    per_round = [0 if e > max_run_s else blocks(e, seconds, rounds) for e in estimates]
    for _ in range(rounds):
        for cell, n in zip(cells, per_round):
            if not n:
                continue
            time.sleep(SETTLE_S)
            cell.call()
            for _ in range(n):
                start = time.perf_counter()
                cell.call()
                cell.times.append(time.perf_counter() - start)


def _make_cell(runtime: str, shape: Shape, threads: int) -> Cell:
    family, precision = runtime.split("-")
    if family == "nerve":
        return _nerve_cell(shape, precision, threads)
    if family == "torch":
        return _torch_cell(shape, precision, threads)
    raise ValueError(runtime)


def measure_shape(shape: Shape, runtimes: Sequence[str], threads: int, seconds: float,
                  best_rates: dict[str, float], max_run_s: float) -> dict[str, Any]:  # fmt: skip
    """Build and time every runtime's cell for ``shape``; returns the JSON entry."""
    cells: list[Cell] = []
    skipped: dict[str, str] = {}
    blas_name = ""
    for runtime in runtimes:
        slow = too_slow(shape, best_rates.get(runtime), max_run_s)
        if slow is not None:
            skipped[runtime] = f"about {slow:.0f} s per run at its rate on a smaller shape"
            continue
        try:
            if runtime == "openblas-fp32":
                cell, blas_name = _blas_cell(shape, threads)
            else:
                cell = _make_cell(runtime, shape, threads)
        except ImportError as exc:
            skipped[runtime] = f"not installed ({exc.name or exc})"
            continue
        cells.append(cell)
    _time_cells(cells, seconds, ROUNDS, max_run_s)
    x, w = _operands(shape)
    reference = x @ w
    entry: dict[str, Any] = {"shape": list(shape), "ops": ops(shape), "cells": {},
                             "plans": {}, "skipped": skipped}  # fmt: skip
    for cell in cells:
        error = product_error(reference, cell.output())
        best, median = min(cell.times), float(np.median(cell.times))
        best_rates[cell.runtime] = max(best_rates.get(cell.runtime, 0.0), rate(shape, best))
        entry["cells"][cell.runtime] = {
            "best_ms": round(best * 1e3, 4),
            "p50_ms": round(median * 1e3, 4),
            "runs": len(cell.times),
            "gops_best": round(rate(shape, best), 2),
            "gops_p50": round(rate(shape, median), 2),
            "max_rel_err": float(f"{error:.3g}"),
            "error_ok": error <= TOLERANCE[cell.runtime.split("-")[1]],
        }
        if cell.plan:
            entry["plans"][cell.runtime] = cell.plan
    if blas_name:
        entry["blas"] = blas_name
    return entry


# ---- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(shape_key(s) for s in SHAPES),
                        help="comma-separated M x K x N")  # fmt: skip
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell")
    parser.add_argument("--quick", action="store_true",
                        help=f"a fast pass: {QUICK_SECONDS:g} s per cell")  # fmt: skip
    parser.add_argument("--max-run-s", type=float, default=5.0,
                        help="skip a cell whose single run would take longer (estimated)")  # fmt: skip
    parser.add_argument("--keep-openblas-env", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
        runtimes = parse_runtimes(args.runtimes)
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    seconds = QUICK_SECONDS if args.quick else args.seconds

    inherited = os.environ.get("OPENBLAS_CORETYPE")
    if inherited and not args.keep_openblas_env:
        del os.environ["OPENBLAS_CORETYPE"]  # before nerve loads OpenBLAS
    os.environ["NERVE_THREADS"] = str(args.threads)
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "src"))
    from _results import feature_summary, loadavg, lowp_hardware_note, machine_info

    from nerve.cli import _output as out

    load_before = loadavg()
    results: dict[str, Any] = {}
    best_rates: dict[str, float] = {}
    blas = ""
    for shape in sorted(shapes, key=ops):  # least work first: see too_slow
        with out.Progress(f"{shape_key(shape)}: {len(runtimes)} runtimes"):
            entry = measure_shape(shape, runtimes, args.threads, seconds, best_rates,
                                  args.max_run_s)  # fmt: skip
        blas = entry.pop("blas", blas)
        results[shape_key(shape)] = entry
    results = {shape_key(s): results[shape_key(s)] for s in shapes}  # the order asked for
    table = out.Table("M x K x N", *runtimes, title="GFLOP/s (GOP/s for int8), best of runs",
                      align="l" + "r" * len(runtimes))  # fmt: skip
    for key, entry in results.items():
        table.add_row(key, *(_fmt_rate(entry["cells"].get(r, {}).get("gops_best"))
                             for r in runtimes))  # fmt: skip
    out.emit_table(table)
    for key, entry in results.items():
        for runtime, why in entry["skipped"].items():
            out.warn(f"{key} {runtime} skipped: {why}")
    machine = machine_info(inherited, args.keep_openblas_env)
    machine["loadavg_before"] = load_before
    machine["loadavg_after"] = loadavg()
    out.emit(f"CPU features: {feature_summary(machine['features'])}. "
             f"{lowp_hardware_note(machine['features'])}")  # fmt: skip
    settings = {"threads": args.threads, "seconds_per_cell": seconds, "rounds": ROUNDS,
                "runtimes": list(runtimes), "blas": blas or "OpenBLAS",
                "rate": "2*M*K*N / best time"}  # fmt: skip
    if args.no_write:
        return 0
    BASELINE.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(BASELINE.read_text()) if BASELINE.is_file() else {}
    merged: dict[str, Any] = {}
    if set(shapes) != set(SHAPES):  # a partial run replaces only its shapes
        merged.update(previous.get("shapes", {}))
    merged.update(results)
    BASELINE.write_text(
        json.dumps({"machine": machine, "settings": settings, "shapes": merged}, indent=1) + "\n"
    )
    from _results import write_section

    write_section(SECTION, section(merged, machine, settings), RESULTS)
    out.emit(f"wrote {RESULTS.relative_to(HERE.parent)} and {BASELINE.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
