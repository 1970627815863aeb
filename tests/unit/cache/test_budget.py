"""The compile budget: counted per target and process, a warning at 90%, an error past it;
cache hits and weight updates are free."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

import nerve
from nerve.compiler.targets import TARGETS, get_target
from nerve.errors import CompileBudgetError
from nerve.runtime.budget import charge, compile_count, remaining
from nerve.runtime.cache import ProgramCache
from tests.unit.cache.models import add_weight


@pytest.fixture
def host_budget_10(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The built-in host target with a budget of 10 compiles (it stays cacheable)."""
    budgeted = dataclasses.replace(get_target("host"), compile_budget=10)
    made: dict[str, Any] = TARGETS._made
    monkeypatch.setitem(made, "host", budgeted)
    return budgeted


def test_the_ane_target_carries_its_budget() -> None:
    assert get_target("ane").compile_budget == 119
    assert get_target("host").compile_budget is None and remaining(get_target("host")) is None


def test_warns_at_90_percent_and_raises_past_the_budget(host_budget_10: Any, recwarn: Any) -> None:
    for n in range(8):
        nerve.compile(add_weight(size=n + 1), cache=False)
    assert compile_count("host") == 8 and not recwarn.list
    with pytest.warns(RuntimeWarning, match="compile 9 of 10 allowed per process"):
        nerve.compile(add_weight(size=9), cache=False)
    nerve.compile(add_weight(size=10), cache=False)
    assert remaining(host_budget_10) == 0
    with pytest.raises(CompileBudgetError, match="allows 10 compiles per process"):
        nerve.compile(add_weight(size=11), cache=False)
    assert compile_count("host") == 10


def test_cache_hits_and_weight_updates_do_not_count(host_budget_10: Any,
                                                    cache: ProgramCache) -> None:
    program = nerve.compile(add_weight(), cache=cache)
    assert compile_count() == 1
    for value in range(20):
        nerve.compile(add_weight(value=float(value)), cache=cache)
        program.update_weights({"w": np.full(4, float(value), np.float32)})
    assert compile_count() == 1
    cache.forget()
    nerve.compile(add_weight(), cache=cache)  # a disk hit
    assert compile_count() == 1


def test_counts_are_per_target() -> None:
    charge(get_target("host"))
    charge(get_target("ane"))
    charge(get_target("ane"))
    assert (compile_count(), compile_count("host"), compile_count("ane")) == (3, 1, 2)
    assert remaining(get_target("ane")) == 117


def test_runtime_reports_the_process_compile_count(cache: ProgramCache) -> None:
    with nerve.Runtime() as runtime:
        before = runtime.compile_count
        runtime.compile(add_weight(), cache=cache)
        runtime.compile(add_weight(value=3.0), cache=cache)  # a hit: not a compile
        assert runtime.compile_count == before + 1 == compile_count()
