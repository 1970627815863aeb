"""The ONNX backend node tests, run through nerve.

ONNX ships each node test as a generator (``onnx.backend.test.case.node``): a one-op model plus
inputs and expected outputs. A *direct* case tests one op; an *expanded* case runs the op's
function body decomposed into other ops. An op is *claimed* when nerve imports it and the host
engine has a kernel for it. Every direct case of a claimed op counts in the conformance table,
excluded or not (excluded cases are counted as not passing).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
from onnx.backend.test.case.test_case import TestCase

from nerve.engines.host.registry import supported_kernels
from nerve.frontend.onnx.registry import supported_ops

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
    """Compile the case's model, run every data set, and assert the outputs match."""
    import nerve

    model = case.model
    initializers = {t.name for t in model.graph.initializer}
    input_names = [i.name for i in model.graph.input if i.name not in initializers]
    output_names = [o.name for o in model.graph.output]
    for inputs, expected in case.data_sets:
        feeds = {n: np.asarray(v) for n, v in zip(input_names, inputs)}
        shapes = {n: tuple(v.shape) for n, v in feeds.items()}
        program = nerve.compile(model, target=target, shapes=shapes)
        with np.errstate(all="ignore"):
            got = program.run(feeds)
        for name, want in zip(output_names, expected):
            _assert_close(name, got[name], np.asarray(want), case.rtol, case.atol)


def _assert_close(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> None:
    assert got.shape == want.shape, f"{name}: shape {got.shape} != expected {want.shape}"
    if want.dtype == object or want.dtype.kind in "US":
        np.testing.assert_array_equal(got.astype(object), want.astype(object), err_msg=name)
        return
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != expected {want.dtype}"
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)
