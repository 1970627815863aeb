"""The compile budget: how many compiles a process may run for a target.

Some engines cannot compile forever: Apple's ANE compiler leaks state, and a process gets
about 119 compiles (``Target.compile_budget``; the ``ane`` target carries it). nerve counts
the compiles that really run passes — cache hits and weight updates do not count — per
target and per process (a forked child starts from zero), warns once at 90% of the budget and
raises :class:`~nerve.errors.CompileBudgetError` for a compile past it.

>>> from nerve.compiler.targets import get_target
>>> reset_compile_count()
>>> charge(get_target("host")); compile_count(), compile_count("host"), compile_count("ane")
(1, 1, 0)
>>> reset_compile_count()
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings

from nerve.compiler.targets import Target
from nerve.errors import CompileBudgetError

log = logging.getLogger("nerve")

WARN_FRACTION = 0.9

_lock = threading.Lock()
_pid = os.getpid()
_counts: dict[str, int] = {}
_warned: set[str] = set()


def _this_process() -> None:
    """Forget the parent's counts in a forked child (the budget is per process)."""
    global _pid
    if os.getpid() != _pid:
        _pid = os.getpid()
        _counts.clear()
        _warned.clear()


def compile_count(target: str | None = None) -> int:
    """Compiles this process has run (all targets, or ``target``'s); cache hits not counted."""
    with _lock:
        _this_process()
        if target is None:
            return sum(_counts.values())
        return _counts.get(target, 0)


def remaining(target: Target) -> int | None:
    """Compiles ``target`` still allows in this process (None: no budget)."""
    if target.compile_budget is None:
        return None
    return max(0, target.compile_budget - compile_count(target.name))


def charge(target: Target) -> None:
    """Count one compile for ``target``; refuse it when the budget is spent.

    Call it just before a compile that runs the passes (a cache miss).
    """
    budget = target.compile_budget
    with _lock:
        _this_process()
        used = _counts.get(target.name, 0)
        if budget is not None and used >= budget:
            raise CompileBudgetError(
                f"target {target.name!r} allows {budget} compiles per process and this process "
                f"has used them all. Reuse compiled programs (the program cache serves models "
                f"compiled before; update_weights changes weights without compiling) or run "
                f"further compiles in a new process"
            )
        used += 1
        _counts[target.name] = used
        warn = (budget is not None and used >= math.ceil(WARN_FRACTION * budget)
                and target.name not in _warned)
        if warn:
            _warned.add(target.name)
    if warn:
        message = (
            f"compile {used} of {budget} allowed per process for target {target.name!r}; "
            f"CompileBudgetError past {budget}. Reuse programs or update weights instead of "
            "recompiling"
        )
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def reset_compile_count() -> None:
    """Start counting from zero (for tests, and for tools that restart their engine)."""
    with _lock:
        _counts.clear()
        _warned.clear()


__all__ = ["WARN_FRACTION", "charge", "compile_count", "remaining", "reset_compile_count"]
