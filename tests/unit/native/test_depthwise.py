"""Depthwise convolutions on the native engine against the host engine.

The channel-blocked kernel (csrc/nk_depthwise.c) has separate paths for rows of at least 16
columns and narrower ones, a last block of fewer than 16 channels, the 3x3 stride-1/2 taps
and the general taps, bands of output rows, and tiles that end before the input's last
column; each case below reaches at least one of them, on one and two threads.
"""

from __future__ import annotations

import numpy as np
import pytest

import nerve

from .models import make, node, rand

_CASES = {
    # name: (input shape, kernel (KH, KW), attributes)
    "channel_tail_narrow_rows": ((1, 37, 9, 11), (3, 3), {"pads": [1, 1, 1, 1]}),
    "stride2_wide_rows_batch2": ((2, 20, 23, 40), (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "kernel_5x5": ((1, 16, 30, 17), (5, 5), {"pads": [2, 2, 2, 2]}),
    "dilation_2": ((1, 24, 19, 21), (3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    "stride3_asymmetric_pads": ((1, 32, 12, 34), (3, 3), {"pads": [0, 1, 2, 0], "strides": [3, 3]}),
    "many_bands": ((1, 16, 200, 120), (3, 3), {"pads": [1, 1, 1, 1]}),
    "one_row": ((1, 48, 1, 50), (1, 3), {"pads": [0, 1, 0, 1]}),
    "stride2_7x7": ((1, 40, 7, 7), (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "last_column_unread_wide": ((1, 16, 17, 33), (3, 3), {"pads": [1, 1, 0, 0], "strides": [2, 2]}),
    "last_column_unread_narrow": ((1, 16, 9, 9), (3, 3), {"pads": [1, 1, 0, 0], "strides": [2, 2]}),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", sorted(_CASES))
def test_depthwise_matches_host(case: str, threads: int) -> None:
    shape, (kh, kw), attrs = _CASES[case]
    channels = shape[1]
    rng = np.random.default_rng(11)
    feeds = {"x": rand(rng, *shape)}
    weights = {"w": rand(rng, channels, 1, kh, kw), "b": rand(rng, channels)}
    model = make([node("Conv", ["x", "w", "b"], group=channels, **attrs)], feeds, ["y"], weights)
    got = nerve.compile(model, target="cpu", threads=threads).run(feeds)["y"]
    want = nerve.compile(model, target="host").run(feeds)["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_depthwise_with_residual_epilogue_and_multiplier(threads: int) -> None:
    """A residual Add fused after the blocked kernel, and a depth multiplier of 2 (which the
    plane kernel runs) in one graph."""
    rng = np.random.default_rng(12)
    feeds = {"x": rand(rng, 1, 24, 14, 14), "r": rand(rng, 1, 24, 14, 14)}
    weights = {"w": rand(rng, 24, 1, 3, 3), "w2": rand(rng, 48, 1, 3, 3)}
    model = make(
        [
            node("Conv", ["x", "w"], "c", group=24, pads=[1, 1, 1, 1]),
            node("Add", ["c", "r"], "s"),
            node("Conv", ["s", "w2"], "y", group=24, pads=[1, 1, 1, 1]),
        ],
        feeds,
        ["y"],
        weights,
    )
    got = nerve.compile(model, target="cpu", threads=threads).run(feeds)["y"]
    want = nerve.compile(model, target="host").run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
