"""The Engine / Executable protocol every engine implements.

An Engine builds one Executable per Plan segment. An Executable runs its segment over an
environment (tensor name -> array): it reads its inputs from it and writes its outputs into it.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Protocol

import numpy as np

from nerve.errors import TargetError

if TYPE_CHECKING:
    from nerve.compiler.plan import Plan, Segment

Env = MutableMapping[str, np.ndarray]


class Executable(Protocol):
    def run(self, env: Env) -> None:
        """Compute the segment's outputs from ``env`` and store them in ``env``."""


class Engine(Protocol):
    name: str

    def build(self, segment: Segment, plan: Plan) -> Executable:
        """Turn one segment of ``plan`` into something that runs."""


def get_engine(name: str) -> Engine:
    """The engine registered under ``name``.

    >>> get_engine("host").name
    'host'
    """
    if name == "host":
        from nerve.engines.host import HostEngine

        return HostEngine()
    if name == "native":
        from nerve.engines.native import NativeEngine

        return NativeEngine()
    raise TargetError(f"unknown engine {name!r}; available: host, native")
