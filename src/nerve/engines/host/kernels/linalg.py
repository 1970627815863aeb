"""Host kernels of the linalg family."""

from __future__ import annotations

import numpy as np

from nerve.engines.host.registry import kernel
from nerve.ir import Node

__all__ = ["Node", "kernel", "np"]
