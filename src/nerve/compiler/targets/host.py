"""The ``host`` target: numpy kernels for every op, the oracle and the fallback.

>>> target().engine, target().ops is None
('host', True)
"""

from __future__ import annotations

from nerve.compiler.targets import LayoutRules, Limits, Target


def target() -> Target:
    """The host target: every op, the model's own dtypes, mutable weights, no limits."""
    return Target(
        name="host",
        engine="host",
        description="numpy kernels for every op: the oracle and the fallback",
        mutable_weights=True,
        layout=LayoutRules(activation="NCHW", conv_bias=True),
        limits=Limits(),
    )
