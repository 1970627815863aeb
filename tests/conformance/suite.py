"""The ONNX backend node tests, run through nerve.

ONNX ships each node test as a generator (``onnx.backend.test.case.node``): a one-op model plus
inputs and expected outputs. A *direct* case tests one op; an *expanded* case runs the op's
function body decomposed into other ops. An op is *claimed* when nerve imports it and the host
engine has a kernel for it. Every direct case of a claimed op counts in the conformance table,
excluded or not (excluded cases are counted as not passing).

Node tests feed every input as data, even those that fix an output's shape (a Reshape's target
shape, a Slice's bounds, Range's limits). nerve compiles static shapes, so such inputs must be
known at compile time: when, and only when, a case does not compile without it, the runner binds
the smallest set of inputs that makes it compile as constants (``nerve.compile(...,
constants=...)``, as a user would) and feeds the rest; see :func:`compile_case`. The outputs are
checked against the case's expected outputs either way.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
from onnx.backend.test.case.test_case import TestCase

import nerve
from nerve.engines.host.registry import supported_kernels
from nerve.errors import NerveError, ShapeError, UnsupportedAttributeError
from nerve.frontend.onnx.context import tensor_to_array
from nerve.frontend.onnx.registry import supported_ops
from nerve.ir import DType
from nerve.ir.dtypes import bfloat16_to_float32
from tests.conformance.excludes import EXCLUDED


@functools.cache
def all_cases() -> tuple[TestCase, ...]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return tuple(sorted(collect_testcases(None), key=lambda c: c.name))


def ops_of(case: TestCase) -> set[str]:
    return {n.op_type for n in case.model.graph.node}


def is_expanded(case: TestCase) -> bool:
    return "_expanded" in case.name


@functools.cache
def claimed_ops() -> frozenset[str]:
    """Ops nerve imports and the host engine executes. Constant is handled by the importer."""
    return frozenset((set(supported_ops()) & set(supported_kernels())) | {"Constant"})


def primary_op(case: TestCase) -> str:
    ops = ops_of(case)
    return next(iter(ops)) if len(ops) == 1 else "(composite)"


@dataclass(frozen=True)
class Selection:
    direct: list[TestCase]  # direct cases of claimed ops: the conformance denominator
    expanded: list[TestCase]  # expanded cases whose every op is claimed


def select() -> Selection:
    claimed = claimed_ops()
    direct, expanded = [], []
    for case in all_cases():
        if is_expanded(case):
            if ops_of(case) <= claimed:
                expanded.append(case)
        elif primary_op(case) in claimed:
            direct.append(case)
    return Selection(direct, expanded)


def excluded_reason(case: TestCase) -> str | None:
    return EXCLUDED.get(case.name)


def run_case(case: TestCase, target: str = "host") -> None:
    """Compile the case's model, run every data set, and assert the outputs match.

    Graph inputs that must be known at compile time (nerve compiles static shapes, but node
    tests feed a Reshape's target shape, a Slice's bounds, a Pad's amounts... as graph inputs)
    are bound as constants by :func:`compile_case`; the program then runs on the remaining
    inputs and its outputs are checked against the case's expected outputs as usual.
    """
    model = case.model
    initializers = {t.name for t in model.graph.initializer}
    input_names = [i.name for i in model.graph.input if i.name not in initializers]
    output_names = [o.name for o in model.graph.output]
    for inputs, expected in case.data_sets:
        feeds = {n: _case_array(v)[0] for n, v in zip(input_names, inputs)}
        program, bound = compile_case(model, feeds, target)
        with np.errstate(all="ignore"):
            got = program.run({n: v for n, v in feeds.items() if n not in bound})
        for name, value in zip(output_names, expected):
            want, is_bfloat16 = _case_array(value)
            _assert_close(name, got[name], want, case.rtol, case.atol, is_bfloat16)


# The subset search below stops after this many compile attempts (cases have few inputs).
MAX_BINDING_ATTEMPTS = 128


def compile_case(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], target: str = "host"
) -> tuple[nerve.Program, set[str]]:
    """Compile ``model`` for the data set ``feeds``; also return the inputs bound as constants.

    The rule: first compile with input shapes only. Only if that fails because a shape or an
    attribute depends on a value known only at run time (a ShapeError or an
    UnsupportedAttributeError), bind the *smallest* set of graph inputs that makes the model
    compile (ties: the first in input order) to this data set's values, with
    ``nerve.compile(..., constants=...)`` — what a user does for such a model. If no set does,
    the first error stands.
    """
    shapes = {n: tuple(v.shape) for n, v in feeds.items()}
    try:
        return nerve.compile(model, target=target, shapes=shapes), set()
    except (ShapeError, UnsupportedAttributeError) as exc:
        first_error = exc
    attempts = 0
    for size in range(1, len(feeds) + 1):
        for names in itertools.combinations(feeds, size):
            attempts += 1
            if attempts > MAX_BINDING_ATTEMPTS:
                raise first_error
            try:
                program = nerve.compile(
                    model,
                    target=target,
                    shapes={n: s for n, s in shapes.items() if n not in names},
                    constants={n: feeds[n] for n in names},
                )
            except NerveError:
                continue
            return program, set(names)
    raise first_error


def _case_array(value: object) -> tuple[np.ndarray, bool]:
    """A case's input or output as nerve holds it, and whether it is bfloat16.

    Cases give numpy arrays (bfloat16 as ml_dtypes.bfloat16) or TensorProtos; nerve holds
    bfloat16 as uint16 bit patterns.
    """
    if isinstance(value, onnx.TensorProto):
        array, dtype = tensor_to_array(value)
        return array, dtype is DType.BFLOAT16
    array = np.asarray(value)
    if array.dtype.name == "bfloat16":
        return array.view(np.uint16), True
    return array, False


def _assert_close(
    name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float, bfloat16: bool = False
) -> None:
    assert got.shape == want.shape, f"{name}: shape {got.shape} != expected {want.shape}"
    if bfloat16:
        # Both are bfloat16 bit patterns (uint16): compare the values they stand for.
        assert got.dtype == np.uint16, f"{name}: dtype {got.dtype} != bfloat16 bits (uint16)"
        got, want = bfloat16_to_float32(got), bfloat16_to_float32(want)
    if want.dtype == object or want.dtype.kind in "US":
        np.testing.assert_array_equal(got.astype(object), want.astype(object), err_msg=name)
        return
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != expected {want.dtype}"
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)
