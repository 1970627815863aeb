"""The scale-aware closeness check every end-to-end test uses.

``max|ours - theirs| <= rtol * max(1, max|theirs|)``: relative to the output's magnitude for
large outputs, absolute for outputs of order one or less (where a pure relative check would
demand impossible precision near zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RTOL = 1e-4


def max_error(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """(max absolute difference, allowed difference at RTOL=1) of two same-shaped arrays."""
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if a.size == 0:
        return 0.0, 1.0
    return float(np.max(np.abs(a - b))), max(1.0, float(np.max(np.abs(b))))


def assert_close(
    ours: Mapping[str, np.ndarray],
    theirs: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    names: Sequence[str] | None = None,
    rtol: float = RTOL,
    label: str = "reference",
) -> None:
    """Assert that nerve's outputs (by name) match ``theirs`` (in ``names`` order, or by name)."""
    names = list(names if names is not None else ours)
    expected = [theirs[n] for n in names] if isinstance(theirs, Mapping) else list(theirs)
    assert len(expected) == len(names), f"{len(names)} outputs vs {len(expected)} from {label}"
    for name, want in zip(names, expected):
        got = ours[name]
        want = np.asarray(want)
        assert got.shape == want.shape, f"{name}: shape {got.shape} vs {label} {want.shape}"
        assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} vs {label} {want.dtype}"
        err, scale = max_error(got, want)
        assert err <= rtol * scale, (
            f"{name}: max |nerve - {label}| = {err:.3g} > {rtol:g} * {scale:.3g}"
        )
