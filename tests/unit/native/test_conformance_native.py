"""The ONNX backend node cases of every op the native engine claims, run on the cpu target.

All cases are compiled inside one ``native.batch()``, so the C compiler runs once for the
whole sweep (a few seconds), not once per case.
"""

from __future__ import annotations

import pytest
from onnx.backend.test.case.test_case import TestCase

from tests.conformance.suite import primary_op

from .conformance import Built, build, check, native_cases

CASES = native_cases()


@pytest.fixture(scope="module")
def built() -> dict[str, Built]:
    return build(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_on_cpu_target(built: dict[str, Built], case: TestCase) -> None:
    check(case, built[case.name])


# Ops whose conformance cases the cpu target's op table keeps on host (the dtypes its table
# lists for them exclude every case's types), although the native engine claims some of them.
TARGET_KEEPS_ON_HOST = {"Cast"}


def test_every_claimed_op_runs_natively_somewhere(built: dict[str, Built]) -> None:
    """Each op with float32 cases must have at least one case that ran in generated C."""
    ops = {primary_op(c) for c in CASES} - TARGET_KEEPS_ON_HOST
    native_ops = {primary_op(c) for c in CASES if built[c.name].ran_native}
    assert CASES and ops - native_ops == set(), sorted(ops - native_ops)
