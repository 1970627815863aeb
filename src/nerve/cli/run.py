"""``nerve run model.onnx --input x=x.npy | --random``: compile, run, summarise, time.

Inputs come from ``.npy`` files (``--input NAME=FILE.npy``, or ``--input FILE.npz`` holding
arrays named like the inputs) or are drawn at random (``--random``; also fills any input not
given). Input files also bind symbolic dimensions, so ``--shape`` is rarely needed with them.
"""

from __future__ import annotations

import argparse
import statistics
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import nerve
from nerve.cli import _output as out
from nerve.cli._args import add_shape_argument, input_names, load_model
from nerve.errors import InputError, NerveError
from nerve.frontend.onnx.loader import read_model
from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16
from nerve.runtime import TensorInfo
from nerve.runtime.monitor import profile_run

SHOWN_VALUES = 4


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="compile a model, run it, print an output summary and timing",
        description="Compile an ONNX model with nerve, run it on inputs from .npy files or "
        "random ones, and print each output's summary and the compile and run times.",
    )
    parser.add_argument("model", help="path of an ONNX model")
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=FILE.npy",
        help="an input from a .npy file, or FILE.npz with arrays named like the inputs; repeatable",
    )
    parser.add_argument(
        "--random",
        action="store_true",
        help="random inputs for every input not given: floats ~ N(0,1), integers in {0,1}",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")
    add_shape_argument(parser)
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="N", help="time N runs (default 1)"
    )
    parser.add_argument("--target", default="host", help="compile target (default host)")
    parser.add_argument("--save", metavar="OUT.npz", help="save the outputs to an .npz file")
    parser.add_argument(
        "--profile",
        metavar="TRACE.json",
        help="after the timed runs, run once more recording each op, and write a Chrome trace "
        "(open it in Perfetto or chrome://tracing)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        raise InputError(f"--repeat must be at least 1, got {args.repeat}")
    proto = read_model(args.model)
    given = load_inputs(args.input, input_names(proto))
    if not args.random:
        missing = [n for n in input_names(proto) if n not in given]
        if missing:
            raise InputError(
                f"no value for inputs {missing} of {args.model}; give --input NAME=FILE.npy "
                "for each, or --random"
            )
    # Arrays fix their inputs' shapes; explicit --shape bindings still win.
    file_shapes = {name: a.shape for name, a in given.items()}
    with out.timed() as load_s, out.Progress(f"loading {args.model}"):
        _, graph = load_model(args.model, args.shape, extra_shapes=file_shapes, proto=proto)
    with out.timed() as compile_s, out.Progress(f"compiling for {args.target}"):
        program = nerve.compile(graph, target=args.target)

    feeds = dict(given)
    rng = np.random.default_rng(args.seed)
    for info in program.inputs:
        if info.name not in feeds:
            feeds[info.name] = random_input(info, rng)

    times: list[float] = []
    results: dict[str, np.ndarray] = {}
    with out.Progress(f"running {args.repeat}x", total=args.repeat) as progress:
        for _ in range(args.repeat):
            with out.timed() as run_s:
                results = program.run(feeds)
            times.append(run_s[0])
            progress.advance()

    if args.profile:
        # A separate run, so recording each op does not skew the timings above.
        profile_run(program, feeds, args.profile)

    out.heading(f"{args.model}  (target {program.target})")
    out.emit_table(_inputs_table(program.inputs, given))
    out.emit_table(_outputs_table(program.outputs, results))
    out.emit_table(_timing_table(load_s[0], compile_s[0], times))
    if args.save:
        save_npz(args.save, results)
        out.emit(f"saved {len(results)} outputs to {args.save}")
    if args.profile:
        out.emit(f"wrote a per-op trace to {args.profile}")
    return 0


def save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to exactly ``path`` in ``np.savez`` format (readable by ``np.load``).

    Written by hand because ``np.savez(path, **arrays)`` breaks on an output named ``file``
    or ``allow_pickle`` and silently appends ``.npz`` to other suffixes.
    """
    try:
        with zipfile.ZipFile(path, "w") as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    except OSError as exc:
        raise NerveError(f"cannot write outputs to {path!r}: {exc.strerror or exc}") from None


def load_inputs(specs: Sequence[str], names: Sequence[str]) -> dict[str, np.ndarray]:
    """``--input`` values as arrays by input name; every problem names the spec at fault."""
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep and spec.endswith(".npz"):
            for key, array in _read(spec).items():
                arrays[key] = _check_name(key, spec, names, array)
            continue
        if not sep or not name or not file:
            raise InputError(
                f"--input {spec!r}: expected NAME=FILE.npy (or FILE.npz holding arrays named "
                f"like the inputs); the model's inputs are {list(names)}"
            )
        loaded = _read(file)
        if len(loaded) != 1:
            raise InputError(
                f"--input {spec!r}: {file} holds {len(loaded)} arrays; give one .npy per input"
            )
        arrays[name] = _check_name(name, spec, names, next(iter(loaded.values())))
    return arrays


def _read(file: str) -> dict[str, np.ndarray]:
    path = Path(file)
    if not path.is_file():
        raise InputError(f"input file {file!r} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"input file {file!r} is not a .npy/.npz array file: {exc}") from None
    if isinstance(data, np.ndarray):
        return {path.stem: data}
    with data:
        return {k: data[k] for k in data.files}


def _check_name(name: str, spec: str, names: Sequence[str], array: np.ndarray) -> np.ndarray:
    if name not in names:
        raise InputError(
            f"--input {spec!r}: the model has no input {name!r}; its inputs are {list(names)}"
        )
    return array


def random_input(info: TensorInfo, rng: np.random.Generator) -> np.ndarray:
    """A random array for ``info``: floats ~ N(0, 1), integers in {0, 1}, booleans."""
    if info.dtype == "bfloat16":
        return float32_to_bfloat16(rng.standard_normal(info.shape).astype(np.float32))
    dtype = info.numpy_dtype
    if dtype.kind == "f":
        return rng.standard_normal(info.shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(info.shape) < 0.5
    if dtype.kind in "iu":
        # {0, 1} is a valid index, id, mask or type id for any model; wider ranges are not.
        return rng.integers(0, 2, size=info.shape).astype(dtype)
    raise InputError(
        f"input {info.name!r} has dtype {info.dtype}, which --random cannot make; "
        "give it with --input"
    )


def summarize(array: np.ndarray, dtype: str) -> tuple[str, str, str, str]:
    """(min, max, mean, first values) of an output, as text."""
    values = bfloat16_to_float32(array) if dtype == "bfloat16" else array
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    if values.size == 0 or values.dtype.kind not in "biuf":
        return "-", "-", "-", "[]"
    flat = values.reshape(-1)
    wide = flat.astype(np.float64)
    shown = ", ".join(_fmt_value(v) for v in flat[:SHOWN_VALUES])
    more = ", ..." if flat.size > SHOWN_VALUES else ""
    return (
        _fmt_value(flat.min()),
        _fmt_value(flat.max()),
        f"{wide.mean():.6g}",
        f"[{shown}{more}]",
    )


def _fmt_value(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, (float, np.floating)) else str(v)


def _inputs_table(inputs: Sequence[TensorInfo], given: Mapping[str, np.ndarray]) -> out.Table:
    table = out.Table("input", "dtype", "shape", "source", title="inputs")
    for info in inputs:
        table.add_row(
            info.name,
            info.dtype,
            out.fmt_shape(info.shape),
            "file" if info.name in given else "random",
        )
    return table


def _outputs_table(outputs: Sequence[TensorInfo], results: Mapping[str, np.ndarray]) -> out.Table:
    table = out.Table(
        "output",
        "dtype",
        "shape",
        "min",
        "max",
        "mean",
        "values",
        title="outputs",
        align="lllrrrl",
    )
    for info in outputs:
        table.add_row(
            info.name,
            info.dtype,
            out.fmt_shape(info.shape),
            *summarize(results[info.name], info.dtype),
        )
    return table


def _timing_table(load_s: float, compile_s: float, times: Sequence[float]) -> out.Table:
    table = out.Table("step", "ms", title="timing", align="lr")
    table.add_row("load (read + import)", out.fmt_ms(load_s))
    table.add_row("compile", out.fmt_ms(compile_s))
    if len(times) == 1:
        table.add_row("run", out.fmt_ms(times[0]))
    else:
        table.add_row(f"run x{len(times)}: min", out.fmt_ms(min(times)))
        table.add_row("median", out.fmt_ms(statistics.median(times)))
        table.add_row("mean", out.fmt_ms(statistics.fmean(times)))
        table.add_row("max", out.fmt_ms(max(times)))
    return table
