"""Every direct ONNX node case of every op nerve claims, plus expanded cases of claimed ops."""

from __future__ import annotations

import pytest

from .suite import excluded_reason, run_case, select

_selection = select()


def _params(cases):  # type: ignore[no-untyped-def]
    out = []
    for case in cases:
        reason = excluded_reason(case)
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        out.append(pytest.param(case, id=case.name, marks=marks))
    return out


@pytest.mark.parametrize("case", _params(_selection.direct))
def test_direct_case(case) -> None:  # type: ignore[no-untyped-def]
    run_case(case)


@pytest.mark.parametrize("case", _params(_selection.expanded))
def test_expanded_case(case) -> None:  # type: ignore[no-untyped-def]
    run_case(case)


def test_claimed_op_count_is_reported() -> None:
    # The suite must actually select cases; an empty selection would make the rest vacuous.
    assert _selection.direct, "no conformance case selected: are importers registered?"
