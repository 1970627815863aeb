"""Run the ONNX node cases of the native engine's ops on the ``cpu`` target, in one batch.

Shared by ``test_conformance_native.py`` and ``scripts/gen_conformance.py`` (its native
column). Every case is compiled inside one ``nerve.engines.native.batch()``: one C compiler
run for the whole sweep.
"""

from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass

import numpy as np
from onnx.backend.test.case.test_case import TestCase

import nerve
from nerve.engines import native
from nerve.engines.native import NATIVE_OPS
from nerve.engines.native.executable import NativePart, SequenceExecutable
from tests.conformance.suite import (
    _assert_close,
    _case_array,
    compile_case,
    excluded_reason,
    primary_op,
    select,
)


def native_cases() -> list[TestCase]:
    """Direct cases of the ops the native engine claims (that the host passes)."""
    return [c for c in select().direct if primary_op(c) in NATIVE_OPS and not excluded_reason(c)]


@dataclass
class Built:
    program: nerve.Program | None
    bound: set[str]
    feeds: dict[str, np.ndarray]
    error: str = ""

    @property
    def ran_native(self) -> bool:
        if self.program is None:
            return False
        for exe in self.program._executables:
            for part in exe.parts if isinstance(exe, SequenceExecutable) else [exe]:
                if isinstance(part, NativePart):
                    return True
        return False


def build(cases: list[TestCase]) -> dict[str, Built]:
    """Compile every case's first data set for the cpu target (one compiler run)."""
    result: dict[str, Built] = {}
    with warnings.catch_warnings(), native.batch():
        warnings.simplefilter("ignore")
        for case in cases:
            model = case.model
            initializers = {t.name for t in model.graph.initializer}
            names = [i.name for i in model.graph.input if i.name not in initializers]
            inputs, _ = case.data_sets[0]
            feeds = {n: _case_array(v)[0] for n, v in zip(names, inputs)}
            try:
                program, bound = compile_case(model, feeds, "cpu")
            except Exception as exc:  # reported by the case's own check
                result[case.name] = Built(None, set(), feeds, f"{type(exc).__name__}: {exc}")
                continue
            result[case.name] = Built(program, bound, feeds)
    return result


def check(case: TestCase, entry: Built) -> None:
    """Run a built case and compare with the expected outputs (AssertionError if not)."""
    assert entry.program is not None, entry.error
    _, expected = case.data_sets[0]
    with np.errstate(all="ignore"):
        got = entry.program.run({n: v for n, v in entry.feeds.items() if n not in entry.bound})
    for output, value in zip([o.name for o in case.model.graph.output], expected):
        want, is_bfloat16 = _case_array(value)
        _assert_close(output, got[output], want, case.rtol, case.atol, is_bfloat16)


def native_column() -> dict[str, str]:
    """Per op: "passed / cases (n in native code)" on the cpu target."""
    cases = native_cases()
    built = build(cases)
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for case in cases:
        entry = built[case.name]
        cell = counts[primary_op(case)]
        cell[1] += 1
        cell[2] += entry.ran_native
        try:
            check(case, entry)
            cell[0] += 1
        except Exception:
            pass
    return {op: f"{p} / {t} ({n} native)" for op, (p, t, n) in counts.items()}
